"""Crawl a DICOM tree and read each file's header into a picklable record (in parallel).

Kept apart from grouping/linking so the slow, per-file part can run in worker processes.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mmfusion.dicom.problems import Problem, add_problem

_SERIAL_BELOW = 64  # fewer files than this: no worker processes


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

    record: dict = {"path": path, "problems": [], "problem_codes": []}
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
                    add_problem(record, Problem.NOT_DICOM, "not a DICOM file")
                    return record
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            pixel_offset = fh.tell()
    except Exception as err:  # truncated headers raise assorted errors
        record["modality"] = "UNREADABLE"
        add_problem(record, Problem.UNREADABLE,
                    f"unreadable DICOM ({type(err).__name__}: {err})"[:200])
        return record
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if not modality and "SOPClassUID" not in ds:
        record["modality"] = "NON-DICOM"
        add_problem(record, Problem.NO_MODALITY,
                    "no Modality or SOPClassUID (DICOMDIR or not an object)")
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
                add_problem(record, Problem.TRUNCATED,
                            f"truncated: {size - pixel_offset} bytes of pixel data,"
                            f" {expected} expected")
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
