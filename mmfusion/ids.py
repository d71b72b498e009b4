"""Patient ID sanitising: IDs become path components and must never escape results/."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_id(patient_id: str) -> str:
    """Return a filesystem-safe, stable form of a DICOM PatientID.

    Characters outside `[A-Za-z0-9._-]` become `_`; leading dots are removed so `..`
    or hidden names cannot appear. When anything changed, a short hash of the original
    is appended so that two different IDs never collapse to the same folder.
    """
    raw = str(patient_id).strip()
    if not raw:
        raise ValueError("empty patient ID")
    safe = _UNSAFE.sub("_", raw).lstrip(".")
    if safe != raw or not safe:
        digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe or 'id'}_{digest}"
    return safe[:64]
