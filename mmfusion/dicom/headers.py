"""Crawl a DICOM tree and read each file's header into a picklable record (in parallel).

Kept apart from grouping/linking so the slow, per-file part can run in worker processes.
A damaged file is recorded as UNREADABLE (never skipped silently): one named like DICOM
(`.dcm`, ...) that is not DICOM, an object whose data set lost its Modality/SOPClassUID
while its file meta names a storage class, an image without SeriesInstanceUID. The index
then names it on every image series in the same folder (it may be a lost slice).
A DICOM-SEG (Segmentation or Label Map Segmentation Storage) is described like an
RTSTRUCT: referenced series and Frame of Reference, segment labels (as `roi_names`),
content date, and the frames' extent for linking by geometry.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mmfusion.dicom.problems import Problem, add_problem
from mmfusion.dicom.reading import quiet_pydicom, read_quietly, truncation
from mmfusion.dicom.seg import SEG_SOP_CLASSES, seg_facts

_SERIAL_BELOW = 64  # fewer files than this: no worker processes
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")  # a file so named is meant to be DICOM
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


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
    named_dicom = Path(path).suffix.lower() in DICOM_SUFFIXES
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            try:
                ds, eof = read_quietly(lambda: pydicom.dcmread(fh, stop_before_pixels=True))
            except InvalidDicomError:
                fh.seek(0)
                head = fh.read(2)
                if head not in (b"\x08\x00", b"\x02\x00"):  # preamble-less DICOM starts so
                    if named_dicom:
                        return _damaged(record, f"(named like DICOM but not DICOM, {size} bytes)")
                    record["modality"] = "NON-DICOM"
                    add_problem(record, Problem.NOT_DICOM, "not a DICOM file")
                    return record
                fh.seek(0)
                ds, eof = read_quietly(
                    lambda: pydicom.dcmread(fh, stop_before_pixels=True, force=True))
            pixel_offset = fh.tell()
    except Exception as err:  # truncated headers raise assorted errors
        return _damaged(record, f"({type(err).__name__}: {err})")
    try:
        with quiet_pydicom():
            return _describe(ds, record, named_dicom=named_dicom, eof=eof,
                             pixel_bytes=size - pixel_offset)
    except Exception as err:  # a garbled value (Rows = 'abc', ...): the file is damaged
        fresh = {"path": path, "problems": [], "problem_codes": []}
        return _damaged(fresh, f"(garbled header: {type(err).__name__}: {err})")


def _describe(ds, record: dict, *, named_dicom: bool, eof: str, pixel_bytes: int) -> dict:
    """Fill `record` from a data set read without pixels (see `read_header`)."""
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if not modality and "SOPClassUID" not in ds:
        meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
                         or "")
        if meta_class != _DICOMDIR_CLASS and (meta_class or named_dicom):
            why = f"its file meta names SOP class {meta_class}" if meta_class else \
                "it is named like a DICOM object"
            return _damaged(record, f"(no Modality or SOPClassUID although {why})")
        record["modality"] = "NON-DICOM"
        add_problem(record, Problem.NO_MODALITY,
                    "no Modality or SOPClassUID (DICOMDIR or not an object)")
        return record
    if not modality:  # Modality is required of every object: the header is damaged
        return _damaged(record, "(no Modality: header cut short or garbled)")
    damage = truncation(ds) or eof
    is_seg = modality == "SEG" and str(getattr(ds, "SOPClassUID", "") or "") in SEG_SOP_CLASSES
    if modality != "RTSTRUCT" and not is_seg:  # a damaged RTSTRUCT/SEG keeps its row
        why = _image_damage(ds, modality, damage)
        if why:
            return _damaged(record, why)
    record.update(
        patient_id=str(getattr(ds, "PatientID", "") or "").strip(),
        person=_person_key(ds),
        modality=modality,
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
            if pixel_bytes < expected + 8:
                add_problem(record, Problem.TRUNCATED,
                            f"truncated: {pixel_bytes} bytes of pixel data,"
                            f" {expected} expected")
    if damage:
        add_problem(record, Problem.TRUNCATED, f"truncated: {damage}")
    if is_seg:
        try:
            record.update(seg_facts(ds))
        except Exception as err:  # a damaged data set: record it, index the rest
            add_problem(record, Problem.MALFORMED_SEG,
                        " ".join(f"malformed DICOM-SEG ({type(err).__name__}: {err})".split())
                        [:200])
    if modality == "RTSTRUCT":
        try:
            _rtstruct_facts(ds, record)
        except Exception as err:  # a damaged data set: record it, index the rest
            add_problem(record, Problem.MALFORMED_RTSTRUCT,
                        " ".join(f"malformed RTSTRUCT ({type(err).__name__}: {err})".split())
                        [:200])
    return record


def _image_damage(ds, modality: str, truncated: str) -> str:
    """Why a non-RTSTRUCT object is damaged ("" if it is not): a truncated header, a CT
    without Rows/Columns or SeriesInstanceUID, a garbled UID (which would split a slice
    off into a series of its own)."""
    if truncated:
        return f"(truncated or garbled header: {truncated})"
    if modality == "CT" and ("Rows" not in ds or "Columns" not in ds):
        return "(CT object without Rows/Columns)"
    if "Rows" in ds and not str(getattr(ds, "SeriesInstanceUID", "") or ""):
        return f"({modality or 'image'} object without SeriesInstanceUID)"
    garbled = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                           "FrameOfReferenceUID")
               if not (str(getattr(ds, k, "") or "").isascii()
                       and str(getattr(ds, k, "") or "").isprintable())]
    return f"(garbled {', '.join(garbled)})" if garbled else ""


def _damaged(record: dict, why: str) -> dict:
    record["modality"] = "UNREADABLE"
    add_problem(record, Problem.UNREADABLE, " ".join(f"unreadable DICOM {why}".split())[:200])
    return record


def _rtstruct_facts(ds, record: dict) -> None:
    from mmfusion.dicom.rtstruct import contour_points, referenced_series_uids, structure_problems

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
    for problem in structure_problems(ds):
        add_problem(record, Problem.MALFORMED_RTSTRUCT, f"malformed RTSTRUCT: {problem}")
    names = {str(getattr(i, "ROINumber", "")): str(getattr(i, "ROIName", "") or "").strip()
             for i in getattr(ds, "StructureSetROISequence", []) or []}
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    bad: dict[str, list[str]] = {}
    for roi in getattr(ds, "ROIContourSequence", []) or []:
        name = names.get(str(getattr(roi, "ReferencedROINumber", "")), "?")
        for i, contour in enumerate(getattr(roi, "ContourSequence", []) or [], start=1):
            pts, why = contour_points(contour)
            if pts is None:
                bad.setdefault(name, []).append(f"contour {i}: {why}")
            elif pts.size:
                lo = np.minimum(lo, pts.min(axis=0))
                hi = np.maximum(hi, pts.max(axis=0))
    for name, whys in bad.items():
        more = f" (and {len(whys) - 1} more)" if len(whys) > 1 else ""
        add_problem(record, Problem.BAD_CONTOUR_DATA, f"ROI {name!r}: {whys[0]}{more}")
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
