"""The index TSV: its columns, and writing/reading it (list columns as JSON cells).

Separate from building the index so readers (convert, cohort) need no crawling code.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mmfusion.dicom.problems import SEPARATOR, Problem
from mmfusion.errors import DicomError

COLUMNS = [
    "patient_id", "patient", "modality", "sop_class_uid", "study_uid", "series_uid",
    "sop_instance_uid", "frame_of_reference_uid", "n_files", "rows", "columns",
    "n_positions", "slice_spacing", "referenced_for_uids", "referenced_series_uids",
    "linked_series_uid", "link_method", "roi_names", "structure_set_date", "problems",
    "problem_codes", "dicom_root", "files",
]
LIST_COLUMNS = ("referenced_for_uids", "referenced_series_uids", "roi_names", "files")
JOINED_COLUMNS = ("problems", "problem_codes")  # joined by SEPARATOR, one code per message


def _cell(value) -> str:
    if isinstance(value, list):
        return json.dumps(value)
    text = str(value)
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_index(rows: list[dict], path: str | Path) -> None:
    """Write the index TSV atomically (list columns as JSON, problems and codes joined)."""
    from mmfusion.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(COLUMNS)
        for row in rows:
            out = dict(row)
            for col in JOINED_COLUMNS:
                out[col] = SEPARATOR.join(row[col])
            writer.writerow([_cell(out[c]) for c in COLUMNS])


def read_index(path: str | Path) -> list[dict]:
    """Rows of an index TSV: list columns decoded, `problems` as a list of messages and
    `problem_codes` as the list of their `Problem` codes (same order).

    Raises:
        DicomError: not an index, an index from before problem codes, or a row whose
            codes do not match its messages.
    """
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing == {"problem_codes"}:
            raise DicomError("the DICOM index has no problem_codes column (written by an"
                             " older mmfusion)", path=str(path),
                             fix="re-run `mmfusion index` to rebuild it")
        if missing:
            raise DicomError(f"not a DICOM index (missing columns {sorted(missing)})",
                             path=str(path), fix="create it with `mmfusion index`")
        rows = []
        for line, row in enumerate(reader, start=2):
            for col in LIST_COLUMNS:
                row[col] = json.loads(row[col]) if row[col] else []
            for col in JOINED_COLUMNS:
                row[col] = [p for p in row[col].split(SEPARATOR) if p]
            row["problem_codes"] = _codes(row, path, line)
            rows.append(row)
    return rows


def _codes(row: dict, path: str | Path, line: int) -> list[Problem]:
    try:
        codes = [Problem(c) for c in row["problem_codes"]]
    except ValueError as err:
        raise DicomError(f"line {line}: {err}", path=str(path),
                         fix="re-run `mmfusion index` with this mmfusion version") from None
    if len(codes) != len(row["problems"]):
        raise DicomError(f"line {line}: {len(row['problems'])} problem message(s) but"
                         f" {len(codes)} problem code(s)", path=str(path),
                         fix="re-run `mmfusion index` instead of editing the index")
    return codes
