"""Patient ID sanitising: IDs become path components and must never escape results/.

`sanitize_id` is one-to-one: an ID that is already a safe folder name (characters
`[A-Za-z0-9._-]`, not starting with `.` or `-`, at most 64 characters) is kept as it is;
every other ID becomes `<safe prefix>-h<16 hex digits>`, the digits being a SHA-256 of the
whole original ID. A kept ID never has the hashed form's ending (IDs that do are hashed
too), so a kept ID cannot equal the hashed form of another ID, and two hashed forms are
equal only if their full originals are (up to a 64-bit hash collision, which the DICOM
index checks for: `Problem.PATIENT_ID_COLLISION`).
"""

from __future__ import annotations

import hashlib
import re

MAX_LENGTH = 64  # longest folder name written
HASH_DIGITS = 16
# The `patient` value the DICOM index gives objects without a PatientID: never a folder
# (sanitize_id cannot produce it: it has a space and parentheses).
NO_PATIENT_ID = "(no PatientID)"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HASHED = re.compile(rf"-h[0-9a-f]{{{HASH_DIGITS}}}\Z")
# Snakemake refuses a wildcard value ending in a substring repeated 20 or more times
# ("periodic wildcard", snakemake.io.PeriodicityDetector); such IDs are hashed, and a hashed
# form never ends so (its last 17 characters are 'h' + hex digits, and it is too short for
# a period of 17 or more to repeat 20 times).
_PERIODIC = re.compile(r"(.+)\1{19,}\Z")


def is_hashed_form(name: str) -> bool:
    """Whether `name` has the ending of a hashed (changed or cut) ID."""
    return bool(_HASHED.search(name))


def sanitize_id(patient_id: str) -> str:
    """Return a filesystem-safe, stable, one-to-one form of a DICOM PatientID.

    Surrounding whitespace is ignored (DICOM pads values with spaces). A safe short ID is
    returned unchanged; any other (unsafe characters, a leading `.` or `-`, longer than
    64 characters, periodic, or looking like a hashed form) becomes its first characters
    made safe (unsafe runs as `_`) plus `-h` and 16 hex digits of the SHA-256 of the full
    ID, at most 64 characters in all.

    Raises:
        ValueError: an empty (or all-whitespace) ID.
    """
    raw = str(patient_id).strip()
    if not raw:
        raise ValueError("empty patient ID")
    safe = _UNSAFE.sub("_", raw).lstrip(".-")
    if (safe == raw and len(raw) <= MAX_LENGTH and not is_hashed_form(raw)
            and not _PERIODIC.search(raw)):
        return raw
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:HASH_DIGITS]
    stem = (safe or "id")[: MAX_LENGTH - 2 - HASH_DIGITS]
    return f"{stem}-h{digest}"
