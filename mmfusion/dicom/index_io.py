"""The index TSV: its columns, and writing/reading it (list columns as JSON cells).

Separate from building the index so readers (convert, cohort) need no crawling code.

No absolute input path is written: `files` are relative to the DICOM root, and the
`dicom_root` cell holds the root relative to the folder of the index file itself (so
`mmfusion convert --index` finds the archive without being told, while the index moves
with the results only together with the archive; `--dicom-root` overrides it). In memory
(`build_index`, `read_index`) a row's `dicom_root` is the absolute root, as before; an
index written by an older version (absolute root) is read unchanged.
"""

from __future__ import annotations

import csv
import json
import os
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


def _root_from(index_dir: Path, root: str) -> str:
    """The root as written: relative to the index's folder ("" when unknown)."""
    if not root:
        return ""
    try:
        return Path(os.path.relpath(Path(root).resolve(), index_dir)).as_posix()
    except ValueError:  # another drive (Windows): convert then needs --dicom-root
        return ""


def write_index(rows: list[dict], path: str | Path) -> None:
    """Write the index TSV atomically (list columns as JSON, problems and codes joined;
    `dicom_root` relative to the index's folder)."""
    from mmfusion.io import atomic_path

    index_dir = Path(path).resolve().parent
    roots: dict[str, str] = {}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(COLUMNS)
        for row in rows:
            out = dict(row)
            root = str(row.get("dicom_root") or "")
            if root not in roots:
                roots[root] = _root_from(index_dir, root)
            out["dicom_root"] = roots[root]
            for col in JOINED_COLUMNS:
                out[col] = SEPARATOR.join(row[col])
            writer.writerow([_cell(out[c]) for c in COLUMNS])


def read_index(path: str | Path) -> list[dict]:
    """Rows of an index TSV: list columns decoded, `problems` as a list of messages,
    `problem_codes` as the list of their `Problem` codes (same order) and `dicom_root`
    as an absolute path (recorded relative to the index's folder; "" when not recorded).

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
        index_dir = Path(path).resolve().parent
        for line, row in enumerate(reader, start=2):
            if row["dicom_root"]:
                # relative to the (resolved) index folder; an absolute one stays as it is
                row["dicom_root"] = os.path.normpath(index_dir / row["dicom_root"])
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
