"""Crawl a DICOM tree (any layout), read headers in parallel, and link RTSTRUCTs to CT series.

One index row per image series (per patient), per RT object (RTSTRUCT, RTPLAN, ... by SOP
instance) and per unreadable or non-DICOM file. An RTSTRUCT is linked to a CT series by
its referenced SeriesInstanceUID, else by Frame of Reference plus geometry (the contours'
bounding box must lie within the series). PatientID is kept for joining tables;
PatientName and BirthDate are read only to detect two people sharing one PatientID and
are never written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfusion.errors import DicomError
from mmfusion.ids import sanitize_id

COLUMNS = [
    "patient_id", "patient", "modality", "sop_class_uid", "study_uid", "series_uid",
    "sop_instance_uid", "frame_of_reference_uid", "n_files", "rows", "columns",
    "n_positions", "slice_spacing", "referenced_for_uids", "referenced_series_uids",
    "linked_series_uid", "link_method", "roi_names", "structure_set_date", "problems",
    "dicom_root", "files",
]
LIST_COLUMNS = ("referenced_for_uids", "referenced_series_uids", "roi_names", "files")
IMAGE_MODALITIES_LINKABLE = ("CT",)
_SERIAL_BELOW = 64  # fewer files than this: no worker processes
_GEOMETRY_TOL_MM = 2.0


# --------------------------------------------------------------------------- header reading

def _person_key(ds) -> str:
    name = str(getattr(ds, "PatientName", "") or "").strip()
    birth = str(getattr(ds, "PatientBirthDate", "") or "").strip()
    if not name and not birth:
        return ""
    return hashlib.sha1(f"{name}|{birth}".encode()).hexdigest()[:12]


def _floats(value) -> list[float] | None:
    try:
        return [float(v) for v in value] if value is not None else None
    except (TypeError, ValueError):
        return None


def read_header(path: str) -> dict:
    """Header facts of one file (picklable); never raises for bad files."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    record: dict = {"path": path, "problems": []}
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                head = fh.read(2)
                if head not in (b"\x08\x00", b"\x02\x00"):  # preamble-less DICOM starts so
                    record["modality"] = "NON-DICOM"
                    record["problems"].append("not a DICOM file")
                    return record
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            pixel_offset = fh.tell()
    except Exception as err:  # truncated headers raise assorted errors
        record["modality"] = "UNREADABLE"
        record["problems"].append(f"unreadable DICOM ({type(err).__name__}: {err})"[:200])
        return record
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if not modality and "SOPClassUID" not in ds:
        record["modality"] = "NON-DICOM"
        record["problems"].append("no Modality or SOPClassUID (DICOMDIR or not an object)")
        return record
    record.update(
        patient_id=str(getattr(ds, "PatientID", "") or "").strip(),
        person=_person_key(ds),
        modality=modality or "?",
        sop_class_uid=str(getattr(ds, "SOPClassUID", "") or ""),
        study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
        series_uid=str(getattr(ds, "SeriesInstanceUID", "") or ""),
        sop_instance_uid=str(getattr(ds, "SOPInstanceUID", "") or ""),
        frame_of_reference_uid=str(getattr(ds, "FrameOfReferenceUID", "") or ""),
    )
    if "Rows" in ds and "Columns" in ds and modality != "RTSTRUCT":
        record.update(
            rows=int(ds.Rows), columns=int(ds.Columns),
            position=_floats(getattr(ds, "ImagePositionPatient", None)),
            orientation=_floats(getattr(ds, "ImageOrientationPatient", None)),
            pixel_spacing=_floats(getattr(ds, "PixelSpacing", None)),
            thickness=float(getattr(ds, "SliceThickness", 0) or 0),
        )
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is None or not ts.is_compressed:
            bits = int(getattr(ds, "BitsAllocated", 16) or 16)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
            expected = ds.Rows * ds.Columns * samples * frames * bits // 8
            if size - pixel_offset < expected + 8:
                record["problems"].append(
                    f"truncated: {size - pixel_offset} bytes of pixel data, {expected} expected")
    if modality == "RTSTRUCT":
        _rtstruct_facts(ds, record)
    return record


def _rtstruct_facts(ds, record: dict) -> None:
    from mmfusion.dicom.rtstruct import _CONTOUR_DATA, _raw_floats, referenced_series_uids

    fors, series = referenced_series_uids(ds)
    for item in getattr(ds, "StructureSetROISequence", []) or []:
        uid = str(getattr(item, "ReferencedFrameOfReferenceUID", "") or "")
        if uid and uid not in fors:
            fors.append(uid)
    record["referenced_for_uids"] = fors
    record["referenced_series_uids"] = series
    record["roi_names"] = [str(getattr(i, "ROIName", "") or "").strip()
                           for i in getattr(ds, "StructureSetROISequence", []) or []]
    record["structure_set_date"] = (f"{getattr(ds, 'StructureSetDate', '') or ''}"
                                    f"{getattr(ds, 'StructureSetTime', '') or ''}")
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for roi in getattr(ds, "ROIContourSequence", []) or []:
        for contour in getattr(roi, "ContourSequence", []) or []:
            pts = _raw_floats(contour, _CONTOUR_DATA)
            if pts.size and pts.size % 3 == 0:
                pts = pts.reshape(-1, 3)
                lo = np.minimum(lo, pts.min(axis=0))
                hi = np.maximum(hi, pts.max(axis=0))
    record["contour_bbox"] = [lo.tolist(), hi.tolist()] if np.isfinite(lo).all() else None


def iter_files(root: str | Path) -> list[str]:
    """Every regular file under `root` (hidden files skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out


def read_headers(paths: list[str], *, workers: int = 1, progress: bool = True) -> list[dict]:
    """Read headers of `paths`, in `workers` processes, with a tqdm progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(paths), desc="reading DICOM headers", unit="file",
               disable=not progress or None)
    records = []
    with bar:
        if workers <= 1 or len(paths) < _SERIAL_BELOW:
            for path in paths:
                records.append(read_header(path))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, min(64, len(paths) // (workers * 8)))
                for record in pool.map(read_header, paths, chunksize=chunk):
                    records.append(record)
                    bar.update()
    return records


# --------------------------------------------------------------------------- grouping/linking

@dataclass
class _Series:
    rows: dict
    records: list[dict]
    bbox: tuple[np.ndarray, np.ndarray] | None = None  # LPS extent of the slice planes
    file_problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _series_geometry(series: _Series) -> None:
    from mmfusion.dicom.series import find_duplicate_runs, sort_slices

    recs = series.records
    row = series.rows
    row["rows"] = recs[0].get("rows", "")
    row["columns"] = recs[0].get("columns", "")
    if len({(r.get("rows"), r.get("columns")) for r in recs}) > 1:
        row["problems"].append("slices of different sizes in one series")
    if any(r.get("position") is None or r.get("orientation") is None
           or r.get("pixel_spacing") is None for r in recs):
        row["problems"].append("slices without ImagePositionPatient/Orientation/PixelSpacing")
        return
    try:
        geom = sort_slices(np.array([r["position"] for r in recs]),
                           np.array([r["orientation"] for r in recs]),
                           np.array([r["pixel_spacing"] for r in recs]),
                           fallback_thickness=recs[0].get("thickness"))
    except DicomError as err:
        row["problems"].append(str(err))
        return
    except ValueError as err:
        row["problems"].append(str(err))
        return
    dups = find_duplicate_runs(geom)
    row["n_positions"] = len(recs) - sum(len(run) - 1 for run in dups)
    row["slice_spacing"] = round(geom.slice_spacing, 6)
    if dups:
        row["problems"].append(f"{sum(len(r) - 1 for r in dups)} duplicate slice position(s)")
    if row["n_positions"] == 1:
        row["problems"].append("single-slice series")
    if np.abs(geom.normal - np.array([0, 0, 1])).max() > 1e-3 and \
            np.abs(geom.normal - np.array([0, 0, -1])).max() > 1e-3:
        row["problems"].append("oblique (non-axial) orientation")
    n_x, n_y = int(row["columns"]), int(row["rows"])
    corners = []
    for pos in (geom.positions[0], geom.positions[-1]):
        for i in (0, n_x - 1):
            for j in (0, n_y - 1):
                corners.append(pos + i * geom.pixel_spacing[0] * geom.row_dir
                               + j * geom.pixel_spacing[1] * geom.col_dir)
    corners = np.array(corners)
    half = 0.5 * geom.slice_spacing * np.abs(geom.normal)
    series.bbox = (corners.min(axis=0) - half, corners.max(axis=0) + half)


def _new_row(rec: dict, root: Path) -> dict:
    row = {c: "" for c in COLUMNS}
    for key in ("patient_id", "modality", "sop_class_uid", "study_uid", "series_uid",
                "frame_of_reference_uid"):
        row[key] = rec.get(key, "")
    pid = rec.get("patient_id", "")
    row["patient"] = sanitize_id(pid) if pid else ""
    row["problems"] = list(rec.get("problems", []))
    row["dicom_root"] = str(root)
    row["files"] = []
    return row


def build_index(records: Iterable[dict], root: str | Path) -> list[dict]:
    """Group header records into index rows and link RTSTRUCTs to CT series."""
    root = Path(root).resolve()
    series: dict[tuple[str, str, str], _Series] = {}
    objects: list[dict] = []
    persons: dict[str, set[str]] = defaultdict(set)
    rows_by_patient: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        rel = Path(rec["path"]).resolve().relative_to(root).as_posix() \
            if Path(rec["path"]).resolve().is_relative_to(root) else rec["path"]
        if rec.get("modality") in ("NON-DICOM", "UNREADABLE"):
            row = _new_row(rec, root)
            row["n_files"] = 1
            row["files"] = [rel]
            objects.append(row)
            continue
        if rec.get("person"):
            persons[rec["patient_id"]].add(rec["person"])
        if not rec["patient_id"]:
            rec["problems"].append("no PatientID")
        is_image = "rows" in rec and rec["modality"] not in ("RTSTRUCT",)
        if is_image:
            key = (rec["patient_id"], rec["series_uid"], rec["modality"])
            if key not in series:
                series[key] = _Series(rows=_new_row(rec, root), records=[])
                series[key].rows["problems"] = []
            entry = series[key]
            entry.records.append(rec)
            entry.rows["files"].append(rel)
            for p in rec["problems"]:
                entry.file_problems[p].append(rel)
            continue
        row = _new_row(rec, root)
        row["sop_instance_uid"] = rec.get("sop_instance_uid", "")
        row["n_files"] = 1
        row["files"] = [rel]
        if rec["modality"] == "RTSTRUCT":
            row["referenced_for_uids"] = rec.get("referenced_for_uids", [])
            row["referenced_series_uids"] = rec.get("referenced_series_uids", [])
            row["roi_names"] = rec.get("roi_names", [])
            row["structure_set_date"] = rec.get("structure_set_date", "")
            row["_bbox"] = rec.get("contour_bbox")
        else:
            row["problems"].append(f"{rec['modality']} object: listed, not used")
        objects.append(row)
    for entry in series.values():
        for problem, where in entry.file_problems.items():
            entry.rows["problems"].append(
                f"{problem}: {where[0]}" if len(where) == 1
                else f"{problem}: {len(where)} files, e.g. {where[0]}")
        entry.rows["n_files"] = len(entry.records)
        sops = [r.get("sop_instance_uid") for r in entry.records]
        if len(set(sops)) != len(sops):
            entry.rows["problems"].append("duplicate SOPInstanceUID (copied file?)")
        if entry.rows["modality"] in IMAGE_MODALITIES_LINKABLE:
            _series_geometry(entry)
        else:
            entry.rows["problems"].append(f"{entry.rows['modality']} series: listed, not used")
        fors = {r.get("frame_of_reference_uid", "") for r in entry.records}
        if len(fors) > 1:
            entry.rows["problems"].append("several FrameOfReferenceUIDs in one series")
    ct_by_uid: dict[str, list[_Series]] = defaultdict(list)
    for entry in series.values():
        if entry.rows["modality"] in IMAGE_MODALITIES_LINKABLE:
            ct_by_uid[entry.rows["series_uid"]].append(entry)
    for row in objects:
        if row["modality"] == "RTSTRUCT":
            _link(row, ct_by_uid, series)
    rows = [e.rows for e in series.values()] + objects
    for row in rows:
        rows_by_patient[row["patient_id"]].append(row)
    for pid, people in persons.items():
        if len(people) > 1 and pid:
            for row in rows_by_patient[pid]:
                row["problems"].append(
                    f"PatientID {pid!r} is shared by {len(people)} different patients"
                    " (PatientName/PatientBirthDate differ)")
    rows.sort(key=lambda r: (r["patient_id"], r["modality"] != "CT", r["modality"],
                             r["series_uid"], r["sop_instance_uid"]))
    for row in rows:
        row.pop("_bbox", None)
    return rows


def _inside(bbox, extent) -> bool:
    lo, hi = np.asarray(bbox[0]), np.asarray(bbox[1])
    return bool(np.all(lo >= extent[0] - _GEOMETRY_TOL_MM)
                and np.all(hi <= extent[1] + _GEOMETRY_TOL_MM))


def _overlaps(bbox, extent) -> bool:
    lo, hi = np.asarray(bbox[0]), np.asarray(bbox[1])
    return bool(np.all(hi >= extent[0] - _GEOMETRY_TOL_MM)
                and np.all(lo <= extent[1] + _GEOMETRY_TOL_MM))


def _link(row: dict, ct_by_uid: dict[str, list[_Series]], series: dict) -> None:
    pid = row["patient_id"]
    target = None
    for uid in row["referenced_series_uids"]:
        candidates = ct_by_uid.get(uid, [])
        same = [c for c in candidates if c.rows["patient_id"] == pid]
        if same:
            target, row["link_method"] = same[0], "series_uid"
            break
        if candidates:
            row["problems"].append(f"referenced series {uid} belongs to another PatientID")
    if target is None:
        fors = set(row["referenced_for_uids"])
        candidates = [e for e in series.values()
                      if e.rows["modality"] in IMAGE_MODALITIES_LINKABLE
                      and e.rows["patient_id"] == pid
                      and e.rows["frame_of_reference_uid"] in fors and fors]
        if row.get("_bbox") is not None:
            containing = [c for c in candidates if c.bbox is not None
                          and _inside(row["_bbox"], c.bbox)]
            overlapping = [c for c in candidates if c.bbox is not None
                           and _overlaps(row["_bbox"], c.bbox)]
            if not containing and overlapping:
                row["problems"].append("contours extend beyond the CT series linked by"
                                       " Frame of Reference")
            candidates = containing or overlapping
        if len(candidates) > 1:
            candidates.sort(key=lambda c: -len(c.records))
            row["problems"].append(f"{len(candidates)} CT series fit by Frame of Reference and"
                                   " geometry; the largest was linked")
        if candidates:
            target, row["link_method"] = candidates[0], "frame_of_reference+geometry"
    if target is None:
        if row["referenced_series_uids"]:
            refs = ", ".join(row["referenced_series_uids"])
            row["problems"].append(f"referenced CT series absent from the archive: {refs}")
        else:
            fors = ", ".join(row["referenced_for_uids"]) or "(none)"
            row["problems"].append("no referenced series, and no CT series of this patient"
                                   f" with Frame of Reference {fors} fits the contours")
        return
    row["linked_series_uid"] = target.rows["series_uid"]
    ct_for = target.rows["frame_of_reference_uid"]
    if ct_for and row["referenced_for_uids"] and ct_for not in row["referenced_for_uids"]:
        row["problems"].append(
            f"Frame of Reference mismatch: RTSTRUCT {', '.join(row['referenced_for_uids'])}"
            f" vs CT {ct_for}")


# --------------------------------------------------------------------------- TSV I/O

def _cell(value) -> str:
    if isinstance(value, list):
        return json.dumps(value)
    text = str(value)
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_index(rows: list[dict], path: str | Path) -> None:
    """Write the index TSV atomically (list columns as JSON, problems joined by ' | ')."""
    from mmfusion.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(COLUMNS)
        for row in rows:
            out = dict(row)
            out["problems"] = " | ".join(row["problems"])
            writer.writerow([_cell(out[c]) for c in COLUMNS])


def read_index(path: str | Path) -> list[dict]:
    """Rows of an index TSV, list columns decoded, problems as a list."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DicomError(f"not a DICOM index (missing columns {sorted(missing)})",
                             path=str(path), fix="create it with `mmfusion index`")
        rows = []
        for row in reader:
            for col in LIST_COLUMNS:
                row[col] = json.loads(row[col]) if row[col] else []
            row["problems"] = [p for p in row["problems"].split(" | ") if p]
            rows.append(row)
    return rows


def index_dicom(root: str | Path, *, workers: int = 1, progress: bool = True) -> list[dict]:
    """Crawl `root` and return the index rows."""
    root = Path(root)
    if not root.is_dir():
        raise DicomError("DICOM root is not a folder", path=str(root))
    records = read_headers(iter_files(root), workers=workers, progress=progress)
    return build_index(records, root)


def patients_from_index(index_tsv: str | Path) -> list[str]:
    """Sanitised IDs of patients with a CT series linked to an RTSTRUCT, sorted."""
    return sorted({row["patient"] for row in read_index(index_tsv)
                   if row["modality"] == "RTSTRUCT" and row["linked_series_uid"]
                   and row["patient"]})
