"""Per-patient conversion: CT + RTSTRUCT or DICOM-SEG -> ct.nii.gz, gtv_t.nii.gz,
gtv_n.nii.gz, rois.json.

Which files are read is decided in `mmfusion.dicom.inputs` (re-exported here); the masks
come from `mmfusion.dicom.masks` (RTSTRUCT ROIs or SEG segments, matched by name alike). Outputs
name the inputs by UID and count; a file named in a warning or refusal is given relative
to the DICOM root (`relpaths`). No DICOM header text other than UIDs, geometry and ROI
names / segment labels is copied into rois.json (no names, dates or descriptions).
rois.json names the mask source: `mask_source` ("rtstruct" | "seg") and the `rtstruct` or
`seg` entry (the other is null).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mmfusion import __version__
from mmfusion.dicom.inputs import (
    PatientInputs,
    inputs_from_folder,
    inputs_from_index,
    select_inputs,
)
from mmfusion.dicom.masks import rtstruct_source, seg_source
from mmfusion.dicom.relpaths import relative_error, relative_text
from mmfusion.dicom.rois import compile_roi_regex, match_rois, node_label_map
from mmfusion.dicom.series import SeriesChecks, load_ct_series
from mmfusion.errors import ConfigError, DicomError, MMFusionError
from mmfusion.io import atomic_path
from mmfusion.settings import schema_defaults

log = logging.getLogger(__name__)

__all__ = ["OUTPUT_FILES", "ConvertSettings", "PatientInputs", "convert_patient",
           "inputs_from_folder", "inputs_from_index", "select_inputs"]

OUTPUT_FILES = ("ct.nii.gz", "gtv_t.nii.gz", "gtv_n.nii.gz", "rois.json")


@dataclass(frozen=True)
@schema_defaults("rois")
@schema_defaults("convert")
class ConvertSettings:
    """Settings of the convert stage (config sections `rois` and `convert`; defaults: the
    config schema)."""

    tumour: str  # ROI name regexes (case-insensitive, full match)
    node: str
    plane_tolerance: float  # fraction of the slice spacing
    missing_gap_factor: float
    uneven_tolerance: float

    @classmethod
    def from_config(cls, rois: Mapping | None = None,
                    convert: Mapping | None = None) -> ConvertSettings:
        """Build from the `rois` and `convert` config sections; unknown keys fail."""
        values: dict = {}
        known = {f.name for f in fields(cls)}
        for section, mapping in (("rois", rois or {}), ("convert", convert or {})):
            for key, value in mapping.items():
                if key not in known:
                    raise ConfigError(f"unknown key {section}.{key}",
                                      fix=f"use one of {sorted(known)}")
                values[key] = value
        settings = cls(**values)
        if not 0 < settings.plane_tolerance <= 0.5:
            raise ConfigError("convert.plane_tolerance must be in (0, 0.5]")
        return settings

    def __post_init__(self) -> None:
        # An invalid ROI regex is a config error now, not an exclusion of every patient.
        compile_roi_regex(self.tumour, "tumour")
        compile_roi_regex(self.node, "node")

    def checks(self) -> SeriesChecks:
        return SeriesChecks(missing_gap_factor=self.missing_gap_factor,
                            uneven_tolerance=self.uneven_tolerance)


# --------------------------------------------------------------------------- conversion

def convert_patient(inputs: PatientInputs, out_dir: str | Path,
                    settings: ConvertSettings) -> dict:
    """Convert one patient; write the four outputs atomically; return the rois.json dict.

    All outputs go to temporary files that are renamed only when every step succeeded,
    so a refusal leaves no partial output. The CT is written (and freed) before the
    masks are built, which keeps peak memory near 3x the CT size.

    Raises:
        DicomError: a refusal (geometry policy, no tumour ROI, empty tumour mask, ...).
    """
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(Path(out_dir) / name))
               for name in OUTPUT_FILES}
        try:
            return _convert(inputs, tmp, settings)
        except MMFusionError as err:  # name files relative to the root, as the index does
            raise relative_error(err, inputs.root) from None


def _convert(inputs: PatientInputs, tmp: dict[str, Path], settings: ConvertSettings) -> dict:
    import SimpleITK as sitk

    started = time.perf_counter()
    pid = inputs.patient_id
    warnings = list(inputs.warnings)
    ct = load_ct_series(inputs.ct_files, patient=pid, checks=settings.checks())
    warnings.extend(ct.warnings)
    if ct.array.shape[0] < 2:
        raise DicomError(
            "single-slice CT series: a 3D volume is needed", patient=pid,
            path=ct.files[0], fix="supply the whole CT series (the RTSTRUCT may list the"
            " missing slices)")
    rs = seg_source(inputs.seg, pid) if inputs.seg else rtstruct_source(inputs.rtstruct, pid)
    if (ct.frame_of_reference_uid and rs.frame_of_reference_uids
            and ct.frame_of_reference_uid not in rs.frame_of_reference_uids):
        raise DicomError(
            f"Frame of Reference mismatch: {rs.noun} {', '.join(rs.frame_of_reference_uids)}"
            f" vs CT {ct.frame_of_reference_uid}", patient=pid, path=rs.path,
            fix=f"re-export the {rs.noun} on the CT's Frame of Reference")
    if not ct.frame_of_reference_uid:
        warnings.append(f"CT series has no FrameOfReferenceUID; the {rs.noun}'s masks are"
                        " placed by coordinates alone")
    names = rs.names
    tumour_names = match_rois(names, compile_roi_regex(settings.tumour, "tumour"))
    node_names = [n for n in match_rois(names, compile_roi_regex(settings.node, "node"))
                  if n not in tumour_names]
    warnings.extend(rs.problems({*tumour_names, *node_names}, pid))
    if not tumour_names:
        raise DicomError(
            f"no {rs.item} name matches the tumour pattern {settings.tumour!r}", patient=pid,
            path=rs.path, fix="set `rois.tumour` (or --tumour-roi) to a regex that matches"
            f" one of: {', '.join(names) or f'(no {rs.item}s)'}")
    shape = ct.array.shape
    ct_dtype = str(ct.array.dtype)
    reference = ct.to_sitk()
    ct.array = None  # the SimpleITK image holds the only copy now
    sitk.WriteImage(reference, str(tmp["ct.nii.gz"]), True)
    geometry = sitk.Image(1, 1, 1, sitk.sitkUInt8)  # tiny image carrying the grid only
    geometry.SetOrigin(reference.GetOrigin())
    geometry.SetSpacing(reference.GetSpacing())
    geometry.SetDirection(reference.GetDirection())
    grid = None
    if rs.kind == "seg":  # SEG placement resamples onto a full-size (uint8) CT grid
        grid = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        grid.CopyInformation(reference)
    del reference
    voxel_volume = float(np.prod(ct.spacing))
    roi_reports = {}

    def rasterise(name: str) -> np.ndarray:
        mask, report, notes = rs.mask(name, ct, shape, grid, settings.plane_tolerance)
        voxels = int(np.count_nonzero(mask))
        roi_reports[name] = {**report, "voxels": voxels,
                             "volume_mm3": round(voxels * voxel_volume, 3)}
        warnings.extend(notes)
        return mask

    tumour = np.zeros(shape, dtype=bool)
    for name in tumour_names:
        tumour |= rasterise(name)
    if len(tumour_names) > 1:
        warnings.append(f"{len(tumour_names)} {rs.item}s match the tumour pattern"
                        f" ({', '.join(tumour_names)}); their union is GTV-T")
    tumour_voxels = int(np.count_nonzero(tumour))
    if not tumour_voxels:
        raise DicomError(
            f"tumour {rs.item}(s) {', '.join(tumour_names)} have no voxel on this CT series"
            f" ({'; '.join(warnings[-3:]) or 'no closed contours'})", patient=pid,
            path=rs.path, fix=f"check that the {rs.noun} belongs to this CT series")
    _write_like(tumour.view(np.uint8), geometry, tmp["gtv_t.nii.gz"])
    del tumour
    node_masks = []
    for name in node_names:
        box = _crop(rasterise(name))  # keep only the bounding box of each node ROI
        if box is None:
            warnings.append(f"node {rs.item} {name!r} has no voxel on this CT grid (off the"
                            " series, or smaller than a voxel); no label for it")
        else:
            node_masks.append((name, *box))
    labels, nodes, node_warnings = node_label_map(node_masks, shape, voxel_volume)
    warnings.extend(node_warnings)
    if not node_names:
        warnings.append(f"no {rs.item} matches the node pattern: GTV-N is empty (valid:"
                        " node-negative or not contoured)")
    _write_like(labels, geometry, tmp["gtv_n.nii.gz"])
    summary = {
        "patient_id": pid,
        "mmfusion_version": __version__,
        "ct": {
            "series_uid": ct.series_uid,
            "frame_of_reference_uid": ct.frame_of_reference_uid,
            "size_xyz": [int(v) for v in shape[::-1]],
            "spacing_xyz_mm": [round(float(v), 6) for v in ct.spacing],
            "origin_lps_mm": [round(float(v), 4) for v in ct.origin],
            "direction_lps": [round(float(v), 6) for v in ct.direction.ravel()],
            "dtype": ct_dtype,
            "n_files": len(ct.files),
        },
        "mask_source": rs.kind,
        "rtstruct": rs.describe() if rs.kind == "rtstruct" else None,
        "seg": rs.describe() if rs.kind == "seg" else None,
        "tumour": {"rois": tumour_names, "voxels": tumour_voxels,
                   "volume_mm3": round(tumour_voxels * voxel_volume, 3)},
        "nodes": nodes,
        "node_rois": node_names,
        "other_rois": [n for n in names if n not in tumour_names and n not in node_names],
        "roi_reports": roi_reports,
        "warnings": [relative_text(w, inputs.root) for w in warnings],
        "settings": asdict(settings),
        "seconds": round(time.perf_counter() - started, 3),
    }
    tmp["rois.json"].write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _crop(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(bounding-box slices, the mask inside them), or None for an empty mask."""
    axes = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        axes.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = tuple(axes)
    return box, mask[box].copy()


def _write_like(array: np.ndarray, geometry, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(geometry.GetOrigin())
    image.SetSpacing(geometry.GetSpacing())
    image.SetDirection(geometry.GetDirection())
    sitk.WriteImage(image, str(path), True)
