"""Input paths in outputs are relative to the DICOM root (no absolute archive path).

The index records files relative to the root; conversion reads them by absolute path, so
every text it writes (warnings, refusal messages) is passed through `relative_text`, and
a refusal's error through `relative_error`, before it reaches rois.json, the status file,
the QC tables or a log.
"""

from __future__ import annotations

import os
import re

from mmfusion.errors import MMFusionError


def relative_text(text: str, root: str | os.PathLike | None) -> str:
    """`text` with every path under `root` made relative to it (`root` itself: ".")."""
    if not root or not text:
        return text
    root = os.path.normpath(os.fspath(root))
    text = text.replace(root + os.sep, "")
    return re.sub(re.escape(root) + r"(?![^\s'\"),;:\]])", ".", text)


def relative_error(err: MMFusionError, root: str | os.PathLike | None) -> MMFusionError:
    """`err` with its file and message made root-relative (in place; returned)."""
    if root:
        if err.path is not None:
            err.path = relative_text(str(err.path), root)
        err.args = tuple(relative_text(a, root) if isinstance(a, str) else a
                         for a in err.args)
    return err
