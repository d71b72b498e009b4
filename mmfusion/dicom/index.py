"""Crawl a DICOM tree (any layout), read headers in parallel, and link RTSTRUCTs and
DICOM-SEGs to CT series.

One index row per image series (per patient), per RT or SEG object (RTSTRUCT, SEG, RTPLAN,
... by SOP instance) and per unreadable or non-DICOM file. An RTSTRUCT or DICOM-SEG is
linked to a CT series by its referenced SeriesInstanceUID, else by Frame of Reference plus
geometry (the contours' or SEG frames' bounding box must lie within the series). A SEG
row holds its segment labels in `roi_names` and its ContentDate+Time in
`structure_set_date`. PatientID is kept for joining tables;
PatientName and BirthDate are read only to detect two people sharing one PatientID and
are never written. Every problem is recorded as a message plus a `Problem` code.
Objects without a PatientID get the `patient` value `mmfusion.ids.NO_PATIENT_ID` (never a
folder): they are not linked and appear in `qc/exclusions.tsv`. Two PatientIDs whose
folder names are equal (ignoring case) are both marked `PATIENT_ID_COLLISION`. A file that
cannot be read is named on every image series in its folder (`UNREADABLE_IN_SERIES_FOLDER`).

This module is the orchestration; the parts live in `headers` (crawl, read headers),
`series_geometry`, `linking`, `problems` (codes) and `index_io` (the TSV). Their public
names are importable from here too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from mmfusion.dicom.headers import iter_files, read_header, read_headers
from mmfusion.dicom.index_io import COLUMNS, LIST_COLUMNS, read_index, write_index
from mmfusion.dicom.linking import IMAGE_MODALITIES_LINKABLE, link_rtstruct
from mmfusion.dicom.problems import Problem, add_problem
from mmfusion.dicom.seg import SEG_SOP_CLASSES
from mmfusion.dicom.series_geometry import (
    SeriesGroup,
    check_series_geometry,
    continues_series,
)
from mmfusion.errors import DicomError
from mmfusion.ids import NO_PATIENT_ID, sanitize_id

__all__ = [
    "COLUMNS", "IMAGE_MODALITIES_LINKABLE", "LIST_COLUMNS", "Problem", "build_index",
    "index_dicom", "is_mask_row", "iter_files", "patients_from_index", "read_header",
    "read_headers", "read_index", "write_index",
]


def _new_row(rec: dict, root: Path) -> dict:
    row = {c: "" for c in COLUMNS}
    for key in ("patient_id", "modality", "sop_class_uid", "study_uid", "series_uid",
                "frame_of_reference_uid"):
        row[key] = rec.get(key, "")
    pid = rec.get("patient_id", "")
    readable = rec.get("modality") not in (None, "NON-DICOM", "UNREADABLE")
    row["patient"] = sanitize_id(pid) if pid else (NO_PATIENT_ID if readable else "")
    row["problems"] = list(rec.get("problems", []))
    row["problem_codes"] = list(rec.get("problem_codes", []))
    row["dicom_root"] = str(root)
    row["files"] = []
    return row


def _relative(path: str, given: Path, root: Path) -> str:
    """`path` relative to the DICOM root: lexically (a file under a linked folder keeps
    its place in the tree), else after resolving; a path outside the root stays as is."""
    for base, p in ((given, Path(path).absolute()), (root, Path(path).resolve())):
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    return path


def build_index(records: Iterable[dict], root: str | Path) -> list[dict]:
    """Group header records into index rows and link RTSTRUCTs to CT series.

    File paths are recorded relative to `root` (in `files` and in problem messages)."""
    given = Path(root).absolute()
    root = Path(root).resolve()
    series: dict[tuple[str, str, str], SeriesGroup] = {}
    objects: list[dict] = []
    persons: dict[str, set[str]] = defaultdict(set)
    rows_by_patient: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        rel = _relative(rec["path"], given, root)
        if rel != rec["path"]:  # an error text may quote the file's absolute path
            rec["problems"] = [m.replace(rec["path"], rel) for m in rec.get("problems", [])]
        if rec.get("modality") in ("NON-DICOM", "UNREADABLE"):
            row = _new_row(rec, root)
            row["n_files"] = 1
            row["files"] = [rel]
            objects.append(row)
            continue
        if rec.get("person"):
            persons[rec["patient_id"]].add(rec["person"])
        if not rec["patient_id"]:
            add_problem(rec, Problem.NO_PATIENT_ID, "no PatientID")
        is_mask = rec["modality"] == "RTSTRUCT" or (
            rec["modality"] == "SEG" and rec.get("sop_class_uid") in SEG_SOP_CLASSES)
        is_image = "rows" in rec and not is_mask and rec["modality"] != "RTSTRUCT"
        if is_image:
            key = (rec["patient_id"], rec["series_uid"], rec["modality"])
            if key not in series:
                series[key] = SeriesGroup(rows=_new_row(rec, root), records=[])
                series[key].rows["problems"] = []
                series[key].rows["problem_codes"] = []
            entry = series[key]
            entry.records.append(rec)
            entry.rows["files"].append(rel)
            for code, problem in zip(rec["problem_codes"], rec["problems"], strict=True):
                entry.file_problems[code, problem].append(rel)
            continue
        row = _new_row(rec, root)
        row["sop_instance_uid"] = rec.get("sop_instance_uid", "")
        row["n_files"] = 1
        row["files"] = [rel]
        if is_mask:
            row["referenced_for_uids"] = rec.get("referenced_for_uids", [])
            row["referenced_series_uids"] = rec.get("referenced_series_uids", [])
            row["roi_names"] = rec.get("roi_names", [])
            row["structure_set_date"] = rec.get("structure_set_date", "")
            row["_bbox"] = rec.get("contour_bbox")
        else:
            add_problem(row, Problem.UNUSED_OBJECT, f"{rec['modality']} object: listed, not used")
        objects.append(row)
    for entry in series.values():
        _check_series(entry)
    _unreadable_beside_series(objects, series.values())
    _stray_slices_beside_series(list(series.values()))
    ct_by_uid: dict[str, list[SeriesGroup]] = defaultdict(list)
    for entry in series.values():
        if entry.rows["modality"] in IMAGE_MODALITIES_LINKABLE:
            ct_by_uid[entry.rows["series_uid"]].append(entry)
    for row in objects:
        if is_mask_row(row):
            link_rtstruct(row, ct_by_uid, series)
    rows = [e.rows for e in series.values()] + objects
    for row in rows:
        rows_by_patient[row["patient_id"]].append(row)
    for pid, people in persons.items():
        if len(people) > 1 and pid:
            for row in rows_by_patient[pid]:
                add_problem(row, Problem.SHARED_PATIENT_ID,
                            f"PatientID {pid!r} is shared by {len(people)} different patients"
                            " (PatientName/PatientBirthDate differ)")
    _check_folder_collisions(rows_by_patient)
    rows.sort(key=lambda r: (r["patient_id"], r["modality"] != "CT", r["modality"],
                             r["series_uid"], r["sop_instance_uid"]))
    for row in rows:
        row.pop("_bbox", None)
    return rows


def _unreadable_beside_series(objects: list[dict], series: Iterable[SeriesGroup]) -> None:
    """Name every unreadable file on each image series with slices in the same folder: it
    may be a slice of it (a lost first or last slice leaves no gap to notice)."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for row in objects:
        if row["modality"] == "UNREADABLE":
            by_folder[Path(row["files"][0]).parent.as_posix()].append(row["files"][0])
    if not by_folder:
        return
    for entry in series:
        folders = sorted({Path(f).parent.as_posix() for f in entry.rows["files"]})
        hits = [f for folder in folders for f in by_folder.get(folder, [])]
        if hits:
            more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
            add_problem(entry.rows, Problem.UNREADABLE_IN_SERIES_FOLDER,
                        f"unreadable DICOM file beside the slices of this series (a damaged"
                        f" slice?): {hits[0]}{more}")


def _stray_slices_beside_series(groups: list[SeriesGroup]) -> None:
    """Name, on a CT series, a lone slice in its folder that belongs to another series,
    patient or modality but continues this series' grid by one position (a damaged UID,
    PatientID or Modality split it off: the volume would be one slice short)."""
    lone: dict[str, list[SeriesGroup]] = defaultdict(list)
    for entry in groups:
        if len(entry.records) == 1:
            lone[Path(entry.rows["files"][0]).parent.as_posix()].append(entry)
    if not lone:
        return
    for entry in groups:
        if entry.geometry is None or entry.rows["modality"] not in IMAGE_MODALITIES_LINKABLE:
            continue
        folders = {Path(f).parent.as_posix() for f in entry.rows["files"]}
        hits = [o.rows["files"][0] for folder in sorted(folders) for o in lone.get(folder, [])
                if o is not entry and continues_series(entry, o.records[0])]
        if hits:
            add_problem(entry.rows, Problem.STRAY_SLICE,
                        f"a lone slice of another series, patient or modality continues this"
                        f" series (a damaged slice?): {hits[0]}")


def _check_folder_collisions(rows_by_patient: dict[str, list[dict]]) -> None:
    """Mark the rows of PatientIDs whose folder names coincide (ignoring case, as on
    case-insensitive file systems) with `PATIENT_ID_COLLISION`, naming the IDs."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for pid, rows in rows_by_patient.items():
        if pid and rows:
            by_folder[rows[0]["patient"].casefold()].append(pid)
    for ids in by_folder.values():
        if len(ids) < 2:
            continue
        ids.sort()
        names = " and ".join(repr(i) for i in ids[:4]) + (" ..." if len(ids) > 4 else "")
        folders = ", ".join(sorted({rows_by_patient[i][0]["patient"] for i in ids}))
        for pid in ids:
            for row in rows_by_patient[pid]:
                add_problem(row, Problem.PATIENT_ID_COLLISION,
                            f"PatientIDs {names} map to one patient folder ({folders}; letter"
                            " case ignored, as on case-insensitive file systems)")


def _check_series(entry: SeriesGroup) -> None:
    """Per-file problems (summarised), copies, geometry and Frame of Reference of a series."""
    for (code, problem), where in entry.file_problems.items():
        add_problem(entry.rows, code,
                    f"{problem}: {where[0]}" if len(where) == 1
                    else f"{problem}: {len(where)} files, e.g. {where[0]}")
    entry.rows["n_files"] = len(entry.records)
    sops = [r.get("sop_instance_uid") for r in entry.records]
    if len(set(sops)) != len(sops):
        add_problem(entry.rows, Problem.DUPLICATE_SOP_INSTANCE,
                    "duplicate SOPInstanceUID (copied file?)")
    if entry.rows["modality"] in IMAGE_MODALITIES_LINKABLE:
        check_series_geometry(entry)
    else:
        add_problem(entry.rows, Problem.UNUSED_SERIES,
                    f"{entry.rows['modality']} series: listed, not used")
    fors = {r.get("frame_of_reference_uid", "") for r in entry.records}
    if len(fors) > 1:
        add_problem(entry.rows, Problem.SEVERAL_FRAMES_OF_REFERENCE,
                    "several FrameOfReferenceUIDs in one series")


def index_dicom(root: str | Path, *, workers: int = 1, progress: bool = True) -> list[dict]:
    """Crawl `root` and return the index rows."""
    root = Path(root)
    if not root.is_dir():
        raise DicomError("DICOM root is not a folder", path=str(root))
    records = read_headers(iter_files(root), workers=workers, progress=progress)
    return build_index(records, root)


def is_mask_row(row: dict) -> bool:
    """Whether an index row is a mask object: an RTSTRUCT or a DICOM-SEG (Segmentation or
    Label Map Segmentation Storage; a surface segmentation is not one)."""
    return row["modality"] == "RTSTRUCT" or (row["modality"] == "SEG"
                                             and row["sop_class_uid"] in SEG_SOP_CLASSES)


def patients_from_index(index_tsv: str | Path) -> list[str]:
    """Sanitised IDs of patients with a CT series linked to an RTSTRUCT or DICOM-SEG,
    sorted."""
    return sorted({row["patient"] for row in read_index(index_tsv)
                   if is_mask_row(row) and row["linked_series_uid"]
                   and row["patient"] and row["patient"] != NO_PATIENT_ID})
