"""Reading DICOM quietly and noticing damage pydicom lets pass.

pydicom logs a failed pixel decoder's whole traceback and only warns when a file ends inside
a sequence; it keeps an element the file ends inside without a word. These helpers turn
that into one recorded line (the index, `series`, `rtstruct` use them).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    """Silence pydicom's log (a failed pixel decoder logs a whole traceback) and catch its
    warnings (yielded), so a bad file yields one recorded line, not a screenful."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def read_quietly(read: Callable[[], Any]) -> tuple[Any, str]:
    """`read()` (a pydicom read) under `quiet_pydicom`; returns (its result, "" or a note
    that the file ended inside a sequence, which pydicom only warns about)."""
    with quiet_pydicom() as caught:
        result = read()
    eof = any("End of file" in str(w.message) for w in caught)
    return result, "the file ends inside a sequence" if eof else ""


def truncation(ds) -> str:
    """Why the data set read from a file looks cut short ("" when it does not): pydicom
    keeps an element whose value the file ends inside without complaint."""
    from pydicom.dataelem import RawDataElement

    for tag in ds.keys():
        elem = ds.get_item(tag)
        if (isinstance(elem, RawDataElement) and isinstance(elem.value, bytes)
                and elem.length != 0xFFFFFFFF and len(elem.value) < elem.length):
            return (f"the file ends inside element {elem.tag} ({len(elem.value)} of"
                    f" {elem.length} bytes)")
    return ""
