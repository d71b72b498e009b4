"""RTSTRUCT parsing: ROIs by number (never by position), contours as (N, 3) arrays in mm.

ContourData is parsed from the raw element bytes with numpy: pydicom's per-value DS
objects are ~50x slower on large structure sets. A contour whose ContourData is unusable
(non-numeric, NaN/infinite, incomplete) is not kept; its ROI records why (`Roi.problems`),
and convert refuses the patient when that ROI is one it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfusion.errors import DicomError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_CONTOUR_DATA = 0x30060050
_CONTOUR_TYPE = 0x30060042
CONTOUR_KINDS = ("CLOSED_PLANAR", "OPEN_PLANAR", "OPEN_NONPLANAR", "POINT", "CLOSEDPLANAR_XOR")


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
    problems: list[str] = field(default_factory=list)  # contours dropped: unusable data


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


def contour_points(contour) -> tuple[np.ndarray | None, str]:
    """(N, 3) points of a ContourSequence item, or (None, why) when they are unusable:
    non-numeric, NaN or infinite values, a count that is not a multiple of 3, or fewer
    points than NumberOfContourPoints declares (a truncated value)."""
    if contour.get_item(_CONTOUR_DATA) is None:
        return None, "no ContourData"
    try:
        values = _raw_floats(contour, _CONTOUR_DATA)
    except (TypeError, ValueError) as err:
        return None, f"non-numeric ContourData ({' '.join(str(err).split())[:80]})"
    if values.size % 3:
        return None, f"ContourData has {values.size} values, not a multiple of 3"
    if not np.isfinite(values).all():
        return None, "ContourData has NaN or infinite values"
    kind = str(contour.get("ContourGeometricType", "") or "").strip().upper()
    if kind and kind not in CONTOUR_KINDS:
        return None, f"unknown ContourGeometricType {kind!r} (garbled?)"
    declared = contour.get("NumberOfContourPoints")
    try:
        declared = int(declared) if declared not in (None, "") else None
    except (TypeError, ValueError):
        declared = None
    if declared is not None and declared != values.size // 3:
        return None, (f"ContourData has {values.size // 3} points but NumberOfContourPoints"
                      f" is {declared} (truncated?)")
    return values.reshape(-1, 3), ""


def structure_problems(ds) -> list[str]:
    """Signs of a damaged or truncated RTSTRUCT: a missing or unusable ROI number in a
    StructureSetROISequence or ROIContourSequence item, or an element no DICOM dictionary
    knows (a garbled tag, which swallows the elements after it) in those items or their
    contours."""
    out = []
    for seq, key in (("StructureSetROISequence", "ROINumber"),
                     ("ROIContourSequence", "ReferencedROINumber")):
        for i, item in enumerate(getattr(ds, seq, None) or [], start=1):
            try:
                int(item[key].value)
            except (KeyError, TypeError, ValueError):
                out.append(f"{seq} item {i} has no usable {key}")
            unknown = _unknown_tags(item)
            for contour in item.get("ContourSequence", None) or []:
                unknown += _unknown_tags(contour)
            if unknown:
                out.append(f"{seq} item {i} holds unknown element(s) {unknown[0]} (garbled?)")
    return out


def _unknown_tags(item) -> list[str]:
    from pydicom.datadict import dictionary_has_tag

    return [str(tag) for tag in item.keys()  # item/delimiter tags are never elements
            if tag.group == 0xFFFE or (not tag.is_private and not dictionary_has_tag(tag))]


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
        DicomError: unreadable, truncated or malformed file, or not an RTSTRUCT. (Unusable
            ContourData is not an error here: see `Roi.problems`.)
    """
    import pydicom

    from mmfusion.dicom.reading import quiet_pydicom, read_quietly, truncation

    path = str(path)
    try:
        ds, eof = read_quietly(lambda: pydicom.dcmread(path))
    except Exception as err:
        raise DicomError(f"unreadable RTSTRUCT ({type(err).__name__}: "
                         f"{' '.join(str(err).split())})", patient=patient, path=path) from None
    damage = truncation(ds) or eof
    if damage:
        raise DicomError(f"truncated RTSTRUCT ({damage})", patient=patient, path=path,
                         fix="copy or export the RTSTRUCT again")
    if str(getattr(ds, "Modality", "")) != "RTSTRUCT":
        raise DicomError(f"not an RTSTRUCT (Modality {getattr(ds, 'Modality', '?')})",
                         patient=patient, path=path)
    with quiet_pydicom():  # garbled values make pydicom warn; the checks below report
        return _parse(ds, path, patient, with_contours)


def _parse(ds, path: str, patient: str | None, with_contours: bool) -> StructureSet:
    malformed = structure_problems(ds)
    if malformed:
        raise DicomError(f"malformed RTSTRUCT: {'; '.join(malformed[:3])}", patient=patient,
                         path=path, fix="export the RTSTRUCT again")
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
        number = str(getattr(item, "ReferencedROINumber", "") or "").strip()
        if number.isdigit() and int(number) in rois:  # optional facts: junk is ignored
            rois[int(number)].interpreted_type = str(
                getattr(item, "RTROIInterpretedType", "") or "")
    if with_contours:
        for roi_item in getattr(ds, "ROIContourSequence", []) or []:
            number = int(roi_item.ReferencedROINumber)
            roi = rois.get(number)
            if roi is None:
                roi = rois[number] = Roi(number, f"ROI#{number}", "", "")
            for i, contour in enumerate(getattr(roi_item, "ContourSequence", []) or [],
                                        start=1):
                points, why = contour_points(contour)
                if points is None:
                    roi.problems.append(f"contour {i}: {why}")
                    continue
                kind_elem = contour.get("ContourGeometricType", "")
                kind = str(kind_elem or "").strip().upper() or "CLOSED_PLANAR"
                roi.contours.append(Contour(kind=kind, points=points))
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
