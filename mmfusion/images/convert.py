"""Per-patient conversion of the manifest route: the same four outputs as the DICOM route.

`ct.nii.gz` (the CT, HU, on its own grid), `gtv_t.nii.gz` (0/1), `gtv_n.nii.gz` (uint16,
one label per node, largest first: `mmfusion.dicom.rois.node_label_map`, so a region with
separate components gives one node per component, as an RTSTRUCT ROI does) and
`rois.json`. Every mask is put on the CT grid by `mmfusion.dicom.mask_grid.place_on_grid`
(a sub-volume on the CT's lattice is copied voxel for voxel; another grid is resampled by
nearest neighbour with a warning; a mask that misses the CT is refused). Paths in messages
and outputs are relative to the manifest's folder.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mmfusion import __version__
from mmfusion.dicom.convert import OUTPUT_FILES, ConvertSettings
from mmfusion.dicom.mask_grid import check_direction, place_on_grid
from mmfusion.dicom.relpaths import relative_error, relative_text
from mmfusion.dicom.rois import compile_roi_regex, match_rois, node_label_map
from mmfusion.errors import ImageError, MMFusionError
from mmfusion.images.manifest import ManifestEntry
from mmfusion.images.masks import MaskFile, label_values, read_mask, tumour_value
from mmfusion.images.volumes import read_ct
from mmfusion.io import atomic_path


def convert_manifest_patient(entry: ManifestEntry, out_dir: str | Path,
                             settings: ConvertSettings, base: str | None = None) -> dict:
    """Convert one manifest patient; write the four outputs atomically; return rois.json.

    `base` (the manifest's folder) is stripped from paths in messages and outputs.

    Raises:
        MMFusionError: a refusal naming the patient and the file (an exclusion in a run).
    """
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(Path(out_dir) / name))
               for name in OUTPUT_FILES}
        try:
            summary = _convert(entry, tmp, settings)
        except MMFusionError as err:
            raise relative_error(err, base) from None
        summary["warnings"] = [relative_text(w, base) for w in summary["warnings"]]
        tmp["rois.json"].write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def convert_manifest_row(row: dict, out_dir: str | Path, settings: ConvertSettings) -> dict:
    """Convert the patient of a manifest index row (`read_manifest_index`); a problem the
    index recorded for its files is its refusal (paths relative to the manifest's folder).

    Raises:
        MMFusionError: a refusal naming the patient and the file.
    """
    from mmfusion.images.manifest import entry_from_row

    if row["problems"]:
        more = f" (and {len(row['problems']) - 1} more)" if len(row["problems"]) > 1 else ""
        raise ImageError(relative_text(row["problems"][0], row["manifest_dir"]) + more,
                         patient=row["patient_id"],
                         fix="correct the manifest row or its files, then run again")
    return convert_manifest_patient(entry_from_row(row), out_dir, settings,
                                    base=row["manifest_dir"])


def _regions(entry: ManifestEntry, masks: dict[str, MaskFile], settings: ConvertSettings,
             warnings: list[str]) -> tuple[list[tuple[str, str, object]], list[tuple[str, str,
                                                                                      object]]]:
    """(tumour regions, node regions), each (name, file, image on the mask's own grid)."""
    import SimpleITK as sitk

    pid = entry.patient_id
    tumour_re = compile_roi_regex(settings.tumour, "tumour")
    node_re = compile_roi_regex(settings.node, "node")
    source = masks[entry.tumour]
    tumour: list[tuple[str, str, object]] = []
    value = None
    if source.named:
        names = match_rois(source.segment_names(), tumour_re)
        if not names:
            raise ImageError(f"no segment name matches the tumour pattern {settings.tumour!r}",
                             patient=pid, path=source.path,
                             fix="set `rois.tumour` to a regex that matches one of: "
                             f"{', '.join(source.segment_names()) or '(no segments)'}")
        tumour = [(n, source.path, img) for n, img in source.segments if n in names]
        if entry.tumour_label is not None:
            warnings.append("tumour_label is ignored for a named segmentation (segments are"
                            " matched by name with rois.tumour)")
    else:
        value = tumour_value(source, entry.tumour_label, pid,
                             nodes_share_file=entry.tumour in entry.nodes, warnings=warnings)
        tumour = [(f"{Path(source.path).name} label {value}", source.path,
                   sitk.Cast(source.label_map == value, sitk.sitkUInt8))]
    nodes: list[tuple[str, str, object]] = []
    for path in entry.nodes:
        mask = masks[path]
        if mask.named:
            names = [n for n in match_rois(mask.segment_names(), node_re)
                     if not tumour_re.fullmatch(n)]
            nodes += [(n, path, img) for n, img in mask.segments if n in names]
            if not names:
                warnings.append(f"no segment of {Path(path).name} matches rois.node"
                                f" {settings.node!r} (segments: {', '.join(mask.segment_names())})")
            continue
        values = [v for v in label_values(mask.label_map)
                  if not (path == entry.tumour and v == value)]
        if not values:
            warnings.append(f"node mask {Path(path).name} holds no node (all 0)")
        nodes += [(f"{Path(path).name} label {v}", path,
                   sitk.Cast(mask.label_map == v, sitk.sitkUInt8)) for v in values]
    return tumour, nodes


def _bbox(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    from scipy import ndimage

    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes:
        return None
    return boxes[0], mask[boxes[0]].copy()


def _convert(entry: ManifestEntry, tmp: dict[str, Path], settings: ConvertSettings) -> dict:
    import SimpleITK as sitk

    started = time.perf_counter()
    pid = entry.patient_id
    reference, warnings = read_ct(entry.image, pid, settings.checks())
    check_direction(reference, what="the image", patient=pid, path=entry.image,
                    error=ImageError)
    masks = {path: read_mask(path, pid) for path in dict.fromkeys(entry.masks)}
    tumour_regions, node_regions = _regions(entry, masks, settings, warnings)
    shape = reference.GetSize()[::-1]
    voxel_volume = float(np.prod(reference.GetSpacing()))
    placements: dict[str, dict] = {}

    def on_grid(name: str, path: str, image, role: str) -> np.ndarray:
        placed = place_on_grid(image, reference, what=f"{role} mask {name!r}", patient=pid,
                               path=path, error=ImageError)
        warnings.extend(placed.warnings)
        array = sitk.GetArrayFromImage(placed.image).astype(bool)
        placements[name] = {"file": Path(path).name, "method": placed.method,
                            "voxels": int(array.sum()), "voxels_outside": placed.voxels_outside}
        return array

    tumour = np.zeros(shape, dtype=bool)
    for name, path, image in tumour_regions:
        tumour |= on_grid(name, path, image, "tumour")
    tumour_voxels = int(tumour.sum())
    if not tumour_voxels:
        raise ImageError("the tumour mask has no voxel on the image", patient=pid,
                         path=entry.tumour, fix="check that the mask belongs to this image")
    if len(tumour_regions) > 1:
        warnings.append(f"{len(tumour_regions)} segments match the tumour pattern; their union"
                        " is GTV-T")
    node_masks = []
    for name, path, image in node_regions:
        box = _bbox(on_grid(name, path, image, "node"))
        if box is None:
            warnings.append(f"node {name!r} has no voxel on the image grid; no label for it")
        else:
            node_masks.append((name, *box))
    labels, nodes, node_warnings = node_label_map(node_masks, shape, voxel_volume)
    warnings.extend(node_warnings)
    if not entry.nodes:
        warnings.append("the manifest names no node mask: GTV-N is empty (valid: node-negative"
                        " or not contoured)")
    sitk.WriteImage(reference, str(tmp["ct.nii.gz"]), True)
    for array, name in ((tumour.view(np.uint8), "gtv_t.nii.gz"), (labels, "gtv_n.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(tmp[name]), True)
    return {
        "patient_id": pid,
        "mmfusion_version": __version__,
        "source": "manifest",
        "ct": {
            "file": Path(entry.image).name,
            "size_xyz": [int(v) for v in reference.GetSize()],
            "spacing_xyz_mm": [round(float(v), 6) for v in reference.GetSpacing()],
            "origin_lps_mm": [round(float(v), 4) for v in reference.GetOrigin()],
            "direction_lps": [round(float(v), 6) for v in reference.GetDirection()],
            "dtype": reference.GetPixelIDTypeAsString(),
        },
        "masks": {"tumour": Path(entry.tumour).name, "tumour_label": entry.tumour_label,
                  "nodes": [Path(p).name for p in entry.nodes],
                  "kinds": {Path(p).name: m.kind for p, m in masks.items()}},
        "tumour": {"rois": [n for n, _, _ in tumour_regions], "voxels": tumour_voxels,
                   "volume_mm3": round(tumour_voxels * voxel_volume, 3)},
        "nodes": nodes,
        "node_rois": [n for n, _, _ in node_regions],
        "placements": placements,
        "warnings": warnings,
        "settings": asdict(settings),
        "seconds": round(time.perf_counter() - started, 3),
    }
