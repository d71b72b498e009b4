"""DICOM-SEG reading (highdicom): segments, their labels and references, and each segment
as a SimpleITK 0/1 image on the SEG's own grid.

Public API:
    read_seg(path, *, patient=None) -> SegObject
    SegObject.segments                  list[SegSegment] (number, label, series, FoR)
    SegObject.labels()                  the SegmentLabels, in segment order
    SegObject.segment_image(number)     sitk.Image, uint8 0/1, on the SEG's grid (LPS)
    seg_facts(ds)                       header facts for the DICOM index (no pixel data)
Place a segment on a CT grid with `mmfusion.dicom.mask_grid.place_on_grid`.

Types: BINARY as stored; FRACTIONAL thresholded at half the maximum fractional value
(`value / MaximumFractionalValue >= 0.5`); LABELMAP (the 2024 type) one image per
label value. Segments may overlap (each image is separate). The grid is the one that
highdicom reconstructs from the frames' plane positions (frames need not be contiguous:
slices without a frame are empty); frames that form no regular 3D grid are refused.
Every foreseeable failure is a one-line `DicomError` naming the file (and the patient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfusion.errors import DicomError

SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
}
FRACTIONAL_THRESHOLD = 0.5  # of the maximum fractional value


@dataclass(frozen=True)
class SegSegment:
    """One segment of a DICOM-SEG."""

    number: int  # SegmentNumber
    label: str  # SegmentLabel (matched with the rois.tumour / rois.node regexes)
    referenced_series_uids: tuple[str, ...]  # series of the images its frames derive from
    frame_of_reference_uid: str  # the SEG's FrameOfReferenceUID


@dataclass
class SegObject:
    """A DICOM-SEG instance: what it references and its segments (pixels decoded lazily)."""

    path: str
    patient: str | None
    sop_uid: str
    series_uid: str
    patient_id: str
    segmentation_type: str  # BINARY | FRACTIONAL | LABELMAP
    frame_of_reference_uid: str
    referenced_series_uids: list[str]
    content_date: str  # ContentDate + ContentTime (to choose the newest)
    segments: list[SegSegment]
    _seg: object = field(repr=False, default=None)  # highdicom.seg.Segmentation

    def labels(self) -> list[str]:
        return [s.label for s in self.segments]

    def segment_image(self, number: int):
        """Segment `number` as a SimpleITK uint8 image (1 inside, 0 outside) on the SEG's
        own grid: x = columns, y = rows, z = frames' planes; LPS origin and direction."""
        import SimpleITK as sitk

        from mmfusion.dicom.mask_grid import check_direction
        from mmfusion.dicom.reading import quiet_pydicom

        if number not in {s.number for s in self.segments}:
            raise DicomError(f"DICOM-SEG has no segment {number} (segments"
                             f" {[s.number for s in self.segments]})", patient=self.patient,
                             path=self.path)
        try:
            with quiet_pydicom():
                volume = self._seg.get_volume(segment_numbers=[number],
                                              combine_segments=False, rescale_fractional=True)
        except Exception as err:  # highdicom raises assorted types for bad frames
            raise DicomError(f"DICOM-SEG segment {number} cannot be read as a 3D volume"
                             f" ({_one_line(err)})", patient=self.patient, path=self.path,
                             fix="the SEG's frames must lie on one regular grid; re-export"
                             " it") from None
        array = np.asarray(volume.array)
        if array.ndim == 4:
            array = array[..., 0]
        if self.segmentation_type == "FRACTIONAL":
            inside = array >= FRACTIONAL_THRESHOLD
        else:
            inside = array != 0
        image = sitk.GetImageFromArray(inside.astype(np.uint8))  # (slice, row, col) = (z, y, x)
        direction = np.asarray(volume.direction, dtype=np.float64)[:, ::-1]
        spacing = [float(v) for v in volume.spacing[::-1]]
        if not (np.isfinite(direction).all() and np.isfinite(spacing).all()
                and min(spacing) > 0):
            raise DicomError("DICOM-SEG has a non-finite orientation or spacing",
                             patient=self.patient, path=self.path, fix="re-export it")
        image.SetSpacing(spacing)
        image.SetOrigin([float(v) for v in volume.position])
        image.SetDirection([float(v) for v in direction.ravel()])
        check_direction(image, what="DICOM-SEG", patient=self.patient, path=self.path)
        return image


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:240]


def _uid(ds, keyword: str) -> str:
    return str(getattr(ds, keyword, "") or "").strip()


def seg_facts(ds) -> dict:
    """Header facts of a SEG data set (read without pixels): referenced series, Frame of
    Reference, segment labels, content date, and the frames' LPS bounding box (None when
    the frames carry no usable plane positions). Raises on a malformed data set."""
    series = []
    for item in getattr(ds, "ReferencedSeriesSequence", None) or []:
        series.append(_uid(item, "SeriesInstanceUID"))
    for study in getattr(ds, "StudiesContainingOtherReferencedInstancesSequence", None) or []:
        for item in getattr(study, "ReferencedSeriesSequence", None) or []:
            series.append(_uid(item, "SeriesInstanceUID"))
    labels = []
    for item in getattr(ds, "SegmentSequence", None) or []:
        int(item.SegmentNumber)  # required; a garbled one raises
        labels.append(str(getattr(item, "SegmentLabel", "") or "").strip())
    if not labels:
        raise ValueError("no SegmentSequence")
    return {
        "referenced_series_uids": list(dict.fromkeys(u for u in series if u)),
        "referenced_for_uids": [u for u in [_uid(ds, "FrameOfReferenceUID")] if u],
        "roi_names": labels,
        "structure_set_date": f"{getattr(ds, 'ContentDate', '') or ''}"
                              f"{getattr(ds, 'ContentTime', '') or ''}",
        "contour_bbox": _frames_bbox(ds),
    }


def _frames_bbox(ds) -> list[list[float]] | None:
    """LPS bounding box of the frames' pixel centres (for linking by geometry)."""
    shared = (getattr(ds, "SharedFunctionalGroupsSequence", None) or [None])[0]

    def group(frame, name):
        for holder in (frame, shared):
            seq = getattr(holder, name, None) if holder is not None else None
            if seq:
                return seq[0]
        return None

    corners = []
    rows, cols = int(ds.Rows), int(ds.Columns)
    for frame in getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []:
        plane, orient, measures = (group(frame, n) for n in (
            "PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"))
        if plane is None or orient is None or measures is None:
            return None
        pos = np.asarray([float(v) for v in plane.ImagePositionPatient])
        iop = np.asarray([float(v) for v in orient.ImageOrientationPatient])
        dy, dx = (float(v) for v in measures.PixelSpacing)
        for i in (0, cols - 1):
            for j in (0, rows - 1):
                corners.append(pos + i * dx * iop[:3] + j * dy * iop[3:])
    if not corners:
        return None
    corners = np.asarray(corners)
    if not np.isfinite(corners).all():
        return None
    return [corners.min(axis=0).tolist(), corners.max(axis=0).tolist()]


def read_seg(path: str | Path, *, patient: str | None = None) -> SegObject:
    """Read a DICOM-SEG file (pixels are decoded by `SegObject.segment_image`).

    Raises:
        DicomError: unreadable or truncated file, not a SEG, or a SEG highdicom refuses.
    """
    import pydicom

    from mmfusion.dicom.reading import quiet_pydicom, read_quietly, truncation

    path = str(path)
    try:
        ds, eof = read_quietly(lambda: pydicom.dcmread(path))
    except Exception as err:
        raise DicomError(f"unreadable DICOM-SEG ({_one_line(err)})", patient=patient,
                         path=path, fix="copy or export the SEG again") from None
    damage = truncation(ds) or eof
    if damage:
        raise DicomError(f"truncated DICOM-SEG ({damage})", patient=patient, path=path,
                         fix="copy or export the SEG again")
    modality = _uid(ds, "Modality")
    sop_class = _uid(ds, "SOPClassUID")
    if modality != "SEG" or sop_class not in SEG_SOP_CLASSES:
        raise DicomError(f"not a DICOM-SEG image (Modality {modality or '?'}, SOP class"
                         f" {sop_class or '?'})", patient=patient, path=path,
                         fix="give a Segmentation Storage object")
    _check_orientations(ds, path, patient)
    try:
        with quiet_pydicom():
            import highdicom

            seg = highdicom.seg.Segmentation.from_dataset(ds, copy=False)
            facts = seg_facts(ds)
            segments = _segments(seg, facts)
    except Exception as err:
        raise DicomError(f"malformed DICOM-SEG ({_one_line(err)})", patient=patient,
                         path=path, fix="export the SEG again") from None
    return SegObject(
        path=path, patient=patient, sop_uid=_uid(ds, "SOPInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"), patient_id=_uid(ds, "PatientID"),
        segmentation_type=str(getattr(ds, "SegmentationType", "") or "").upper(),
        frame_of_reference_uid=_uid(ds, "FrameOfReferenceUID"),
        referenced_series_uids=facts["referenced_series_uids"],
        content_date=facts["structure_set_date"], segments=segments, _seg=seg)


def _check_orientations(ds, path: str, patient: str | None) -> None:
    """Refuse a SEG whose frames' ImageOrientationPatient is missing, NaN, zero or not
    orthonormal (before highdicom, whose errors for these say little)."""
    from mmfusion.dicom.series import orientation_of

    groups = [g for g in (getattr(ds, "SharedFunctionalGroupsSequence", None) or [])[:1]]
    groups += list(getattr(ds, "PerFrameFunctionalGroupsSequence", None) or [])
    seen = 0
    for group in groups:
        for item in getattr(group, "PlaneOrientationSequence", None) or []:
            seen += 1
            try:
                orientation_of(item.ImageOrientationPatient)
            except Exception as err:
                raise DicomError(f"DICOM-SEG has an unusable ImageOrientationPatient"
                                 f" ({_one_line(err)})", patient=patient, path=path,
                                 fix="re-export the SEG (two orthonormal direction vectors"
                                 " are needed)") from None
    if not seen and str(getattr(ds, "DimensionOrganizationType", "")) != "TILED_FULL":
        raise DicomError("DICOM-SEG has no PlaneOrientationSequence (no geometry)",
                         patient=patient, path=path, fix="re-export the SEG")


def _segments(seg, facts: dict) -> list[SegSegment]:
    """One `SegSegment` per SegmentSequence item; a segment's referenced series are those
    of the source images its frames derive from (else the SEG's referenced series)."""
    by_sop = {sop: series for _study, series, sop in seg.get_source_image_uids()}
    per_segment: dict[int, list[str]] = {}
    labelmap = str(getattr(seg, "SegmentationType", "")).upper() == "LABELMAP"
    for frame in getattr(seg, "PerFrameFunctionalGroupsSequence", None) or []:
        numbers = [int(i.ReferencedSegmentNumber)
                   for i in getattr(frame, "SegmentIdentificationSequence", None) or []]
        sources = [_uid(src, "ReferencedSOPInstanceUID")
                   for der in getattr(frame, "DerivationImageSequence", None) or []
                   for src in getattr(der, "SourceImageSequence", None) or []]
        found = [by_sop[s] for s in sources if s in by_sop]
        for number in (numbers if not labelmap else [None]):
            per_segment.setdefault(number, []).extend(found)
    out = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        series = per_segment.get(number) or per_segment.get(None) or []
        out.append(SegSegment(
            number=number, label=str(getattr(item, "SegmentLabel", "") or "").strip(),
            referenced_series_uids=tuple(dict.fromkeys(series or
                                                       facts["referenced_series_uids"])),
            frame_of_reference_uid=_uid(seg, "FrameOfReferenceUID")))
    return out
