"""RTSTRUCT parsing: ROIs by number (never by position), contours as (N, 3) arrays in mm.

ContourData is parsed from the raw element bytes with numpy: pydicom's per-value DS
objects are ~50x slower on large structure sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfusion.errors import DicomError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_CONTOUR_DATA = 0x30060050
_CONTOUR_TYPE = 0x30060042


@dataclass
class Contour:
    """One contour: geometric type and points (N, 3) in patient LPS mm."""

    kind: str  # CLOSED_PLANAR, OPEN_PLANAR, OPEN_NONPLANAR, POINT
    points: np.ndarray


@dataclass
class Roi:
    number: int
    name: str
    interpreted_type: str
    frame_of_reference_uid: str
    contours: list[Contour] = field(default_factory=list)


@dataclass
class StructureSet:
    path: str
    sop_uid: str
    series_uid: str
    patient_id: str
    frame_of_reference_uids: list[str]  # from ReferencedFrameOfReferenceSequence
    referenced_series_uids: list[str]  # from RTReferencedSeriesSequence
    rois: list[Roi]
    date: str  # StructureSetDate + Time, for choosing the newest

    def roi_names(self) -> list[str]:
        return [roi.name for roi in self.rois]


def _raw_floats(item, tag: int) -> np.ndarray:
    """Decimal-string values of `tag` in `item` as float64, parsed from the raw bytes."""
    elem = item.get_item(tag)
    if elem is None:
        return np.empty(0)
    value = elem.value
    if isinstance(value, bytes | bytearray):
        text = bytes(value).replace(b"\\", b" ").split()
        return np.array(text, dtype=np.float64) if text else np.empty(0)
    if value is None:
        return np.empty(0)
    if isinstance(value, str | float | int):
        value = [value]
    return np.asarray([float(v) for v in value], dtype=np.float64)


def referenced_series_uids(ds) -> tuple[list[str], list[str]]:
    """(frame of reference UIDs, referenced series UIDs) of an RTSTRUCT dataset."""
    fors: list[str] = []
    series: list[str] = []
    for ref_for in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        uid = str(getattr(ref_for, "FrameOfReferenceUID", "") or "")
        if uid and uid not in fors:
            fors.append(uid)
        for study in getattr(ref_for, "RTReferencedStudySequence", []) or []:
            for ser in getattr(study, "RTReferencedSeriesSequence", []) or []:
                uid = str(getattr(ser, "SeriesInstanceUID", "") or "")
                if uid and uid not in series:
                    series.append(uid)
    return fors, series


def parse_rtstruct(path: str | Path, *, patient: str | None = None,
                   with_contours: bool = True) -> StructureSet:
    """Read an RTSTRUCT file.

    Raises:
        DicomError: unreadable file, not an RTSTRUCT, or a ContourData length that is
            not a multiple of 3.
    """
    import pydicom

    path = str(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise DicomError(f"unreadable RTSTRUCT ({type(err).__name__}: {err})",
                         patient=patient, path=path) from None
    if str(getattr(ds, "Modality", "")) != "RTSTRUCT":
        raise DicomError(f"not an RTSTRUCT (Modality {getattr(ds, 'Modality', '?')})",
                         patient=patient, path=path)
    fors, series = referenced_series_uids(ds)
    rois: dict[int, Roi] = {}
    for item in getattr(ds, "StructureSetROISequence", []) or []:
        number = int(item.ROINumber)
        rois[number] = Roi(
            number=number,
            name=str(getattr(item, "ROIName", "") or "").strip(),
            interpreted_type="",
            frame_of_reference_uid=str(getattr(item, "ReferencedFrameOfReferenceUID", "") or ""),
        )
    for item in getattr(ds, "RTROIObservationsSequence", []) or []:
        number = getattr(item, "ReferencedROINumber", None)
        if number is not None and int(number) in rois:
            rois[int(number)].interpreted_type = str(
                getattr(item, "RTROIInterpretedType", "") or "")
    if with_contours:
        for roi_item in getattr(ds, "ROIContourSequence", []) or []:
            number = int(roi_item.ReferencedROINumber)
            roi = rois.get(number)
            if roi is None:
                roi = rois[number] = Roi(number, f"ROI#{number}", "", "")
            for contour in getattr(roi_item, "ContourSequence", []) or []:
                points = _raw_floats(contour, _CONTOUR_DATA)
                if points.size % 3:
                    raise DicomError(
                        f"ROI {roi.name!r}: ContourData has {points.size} values, not a"
                        " multiple of 3", patient=patient, path=path)
                kind_elem = contour.get("ContourGeometricType", "")
                kind = str(kind_elem or "").strip().upper() or "CLOSED_PLANAR"
                roi.contours.append(Contour(kind=kind, points=points.reshape(-1, 3)))
    date = f"{getattr(ds, 'StructureSetDate', '') or ''}{getattr(ds, 'StructureSetTime', '') or ''}"
    return StructureSet(
        path=path,
        sop_uid=str(getattr(ds, "SOPInstanceUID", "")),
        series_uid=str(getattr(ds, "SeriesInstanceUID", "")),
        patient_id=str(getattr(ds, "PatientID", "") or ""),
        frame_of_reference_uids=fors,
        referenced_series_uids=series,
        rois=sorted(rois.values(), key=lambda r: r.number),
        date=date,
    )
