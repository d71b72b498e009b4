"""Where convert's masks come from: an RTSTRUCT (contours rasterised on the CT grid) or a
DICOM-SEG (segments placed on the CT grid). Both give named masks, matched by name with
the `rois.tumour` / `rois.node` regexes: ROI names of an RTSTRUCT, SegmentLabels of a SEG
(several segments with one label are one mask, their union).

A SEG segment on the CT's own lattice (the usual case: frames derived from the CT
slices) is copied voxel for voxel; on another grid it is resampled by nearest neighbour
with a warning (`mmfusion.dicom.mask_grid.place_on_grid`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mmfusion.dicom.rasterize import rasterise_roi
from mmfusion.dicom.rtstruct import StructureSet, parse_rtstruct
from mmfusion.dicom.seg import SegObject, read_seg
from mmfusion.dicom.series import CTVolume
from mmfusion.errors import DicomError


@dataclass
class MaskSource:
    """Named masks on one CT grid, from an RTSTRUCT or a DICOM-SEG."""

    kind: str  # "rtstruct" | "seg"
    path: str
    names: list[str]  # ROI names / SegmentLabels, in file order, unique
    frame_of_reference_uids: list[str]
    rtstruct: StructureSet | None = None
    seg: SegObject | None = None
    _by_name: dict[str, list] = field(default_factory=dict, repr=False)

    @property
    def noun(self) -> str:
        return "RTSTRUCT" if self.kind == "rtstruct" else "DICOM-SEG"

    @property
    def item(self) -> str:
        """What one named mask is called in messages."""
        return "ROI" if self.kind == "rtstruct" else "segment"

    def describe(self) -> dict:
        """The source's entry of rois.json (UIDs only)."""
        if self.rtstruct is not None:
            return {"sop_instance_uid": self.rtstruct.sop_uid,
                    "series_uid": self.rtstruct.series_uid}
        return {"sop_instance_uid": self.seg.sop_uid, "series_uid": self.seg.series_uid,
                "segmentation_type": self.seg.segmentation_type,
                "segments": {name: [s.number for s in segs]
                             for name, segs in self._by_name.items()}}

    def problems(self, used: set[str], pid: str) -> list[str]:
        """Refuse unusable ContourData in a used ROI (its mask would silently lose
        contours); return warnings for the ROIs that are not used. (SEG: none.)"""
        warnings: list[str] = []
        for roi in self.rtstruct.rois if self.rtstruct is not None else []:
            if not roi.problems:
                continue
            more = f" (and {len(roi.problems) - 1} more)" if len(roi.problems) > 1 else ""
            if roi.name in used:
                raise DicomError(f"ROI {roi.name!r}: {roi.problems[0]}{more}", patient=pid,
                                 path=self.path, fix="repair or re-export the RTSTRUCT")
            warnings.append(f"ROI {roi.name!r} (not used): {len(roi.problems)} contour(s)"
                            f" with unusable ContourData skipped ({roi.problems[0]})")
        return warnings

    def mask(self, name: str, ct: CTVolume, shape: tuple[int, int, int], reference,
             plane_tolerance: float) -> tuple[np.ndarray, dict, list[str]]:
        """(bool mask (Z, Y, X) on the CT grid, report, warnings) of the named mask.

        `reference`: a SimpleITK image with the CT's grid (used for SEG placement)."""
        if self.kind == "rtstruct":
            mask, report = rasterise_roi(self._by_name.get(name, []), shape, ct.origin,
                                         ct.spacing, ct.direction,
                                         plane_tolerance=plane_tolerance)
            warnings = report.warnings(name)
            if report.contours == 0:
                warnings.append(f"ROI {name!r} has no contours (empty ROI)")
            out = asdict(report)
            out.pop("off_volume_planes_mm")
            return mask, out, warnings
        return self._seg_mask(name, reference)

    def _seg_mask(self, name: str, reference) -> tuple[np.ndarray, dict, list[str]]:
        import SimpleITK as sitk

        from mmfusion.dicom.mask_grid import place_on_grid

        mask = np.zeros(reference.GetSize()[::-1], dtype=bool)
        report: dict = {"segments": [], "placement": [], "voxels_outside": 0}
        warnings: list[str] = []
        for segment in self._by_name.get(name, []):
            what = f"segment {segment.number} {name!r}"
            placed = place_on_grid(self.seg.segment_image(segment.number), reference,
                                   what=what, patient=self.seg.patient, path=self.path)
            if not placed.voxels_in:
                warnings.append(f"{what} has no voxel (empty segment)")
            mask |= sitk.GetArrayViewFromImage(placed.image).astype(bool)
            report["segments"].append(segment.number)
            report["placement"].append(placed.method)
            report["voxels_outside"] += placed.voxels_outside
            warnings.extend(placed.warnings)
        if len(report["segments"]) > 1:
            warnings.append(f"{len(report['segments'])} segments are labelled {name!r};"
                            " their union is used")
        return mask, report, warnings


def rtstruct_source(path: str, pid: str) -> MaskSource:
    """The ROIs of an RTSTRUCT (contours of ROIs sharing a name are pooled)."""
    rs = parse_rtstruct(path, patient=pid)
    by_name: dict[str, list] = {}
    for roi in rs.rois:
        by_name.setdefault(roi.name, []).extend(roi.contours)
    return MaskSource(kind="rtstruct", path=rs.path, names=rs.roi_names(),
                      frame_of_reference_uids=rs.frame_of_reference_uids, rtstruct=rs,
                      _by_name=by_name)


def seg_source(path: str, pid: str) -> MaskSource:
    """The segments of a DICOM-SEG, by SegmentLabel (segments sharing a label pooled)."""
    seg = read_seg(path, patient=pid)
    by_name: dict[str, list] = {}
    for segment in seg.segments:
        by_name.setdefault(segment.label, []).append(segment)
    fors = [seg.frame_of_reference_uid] if seg.frame_of_reference_uid else []
    return MaskSource(kind="seg", path=seg.path, names=list(by_name),
                      frame_of_reference_uids=fors, seg=seg, _by_name=by_name)
