"""Fixed-size patches around the tumour (GTV-T) and the largest lymph nodes (GTV-N).

Each patch is resampled straight from the CT onto its own grid (configured spacing and
size, the CT's direction, centred on the ROI), so the CT is never resampled whole and a
patch that reaches past the scan is padded with the lower HU window bound. Output, per
patient, one `patches.npz` (see CONTRACTS.md):

    tumour   float32 (D, H, W)        node1..node3  float32, each its own size
    node_present uint8 (3,)           meta          JSON string (centres in mm, spacing, ...)

Absent nodes are zeros with flag 0. Nodes come from the `gtv_n` label map, whose labels
are ordered by volume (1 = largest), so node1 is the largest node.

With `crop.apply_mask` (the paper's "masked CT": GTV-T and GTV-N images "derived by
applying corresponding masks to the original CT scans") every voxel outside the patch's
own ROI (tumour patch: GTV-T; node patch k: node k alone, not its neighbours) is set to
the padding value. The mask is applied last, after the CT is resampled onto the patch grid
and windowed/normalised, to the ROI resampled onto the same grid by nearest neighbour, so
the voxels inside the ROI are exactly those of the unmasked patch and the voxels outside
equal exactly what padding past the scan takes in that patch (`normalise_patch`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from mmfusion.errors import MMFusionError
from mmfusion.features.converted import read_converted
from mmfusion.features.patches import (
    INSIDE_WARN,
    N_NODES,
    CropSettings,
    Patches,
    fraction_inside,
    patch_grid,
    resample_to,
    roi_centre,
)

log = logging.getLogger(__name__)


def normalise_patch(patch_hu: np.ndarray, settings: CropSettings) -> tuple[np.ndarray, float]:
    """Clip to the HU window and normalise as configured; float32.

    Returns:
        The patch and its padding value: what the low window bound (the HU a voxel past
        the scan takes) becomes in it, by the same arithmetic (minmax 0, none the low
        bound, zscore `(low - mean) / sd` with this patch's statistics).
    """
    low, high = settings.hu_window
    x = np.clip(patch_hu, low, high).astype(np.float32)
    pad = np.full(1, low, dtype=np.float32)
    if settings.normalisation == "minmax":
        x = (x - low) / (high - low)
        pad = (pad - low) / (high - low)
    elif settings.normalisation == "zscore":
        mean, std = float(x.mean()), float(x.std())
        x = (x - mean) / (std if std > 0 else 1.0)
        pad = (pad - mean) / (std if std > 0 else 1.0)
    return x.astype(np.float32), float(pad.astype(np.float32)[0])


def normalise(patch_hu: np.ndarray, settings: CropSettings) -> np.ndarray:
    """Clip to the HU window and normalise as configured; float32."""
    return normalise_patch(patch_hu, settings)[0]


def mask_outside(patch: np.ndarray, roi: np.ndarray, value: float) -> np.ndarray:
    """`patch` (D, H, W) with every voxel where `roi` (D, H, W) is 0 set to `value`."""
    return np.where(roi > 0, patch, np.float32(value)).astype(np.float32)


def crop_patient(
    ct: sitk.Image,
    gtv_t: sitk.Image,
    gtv_n: sitk.Image,
    settings: CropSettings,
    *,
    patient: str | None = None,
) -> Patches:
    """Cut the tumour patch and up to three node patches (largest first) of one patient.

    Args:
        ct: CT in HU.
        gtv_t: binary tumour mask on the CT grid.
        gtv_n: node label map on the CT grid (0 background, 1..k by volume, 1 = largest).
        settings: crop settings.
        patient: patient ID for error messages.

    Returns:
        `Patches` with tumour (D, H, W) and three node patches of their configured sizes.
    """
    for name, mask in (("gtv_t", gtv_t), ("gtv_n", gtv_n)):
        if mask.GetSize() != ct.GetSize() or not np.allclose(
            mask.GetOrigin(), ct.GetOrigin(), atol=1e-3
        ) or not np.allclose(mask.GetSpacing(), ct.GetSpacing(), atol=1e-4):
            raise MMFusionError(
                f"{name} is not on the CT grid (size/origin/spacing differ)",
                patient=patient,
                fix="re-run `mmfusion convert` for this patient",
            )
    ct_f = sitk.Cast(ct, sitk.sitkFloat32)
    gtv_t = sitk.Cast(gtv_t > 0, sitk.sitkUInt8)
    low = settings.hu_window[0]
    if not sitk.GetArrayViewFromImage(gtv_t).any():
        raise MMFusionError(
            "the tumour mask (gtv_t) is empty", patient=patient,
            fix="check that the tumour ROI pattern matches a non-empty contour",
        )

    warnings: list[str] = []

    def cut(label_img: sitk.Image, label: int, size: tuple[int, int, int],
            name: str) -> tuple:
        centre = roi_centre(label_img, label, settings.centre)
        grid = patch_grid(ct, centre, size, settings.spacing)
        hu = resample_to(ct_f, grid, label=False, default=low)
        inside, total = fraction_inside(label_img, label, grid)
        patch, pad = normalise_patch(hu, settings)
        if settings.apply_mask:  # masked CT: after resampling and windowing (module doc)
            roi = resample_to(sitk.Cast(label_img == label, sitk.sitkUInt8), grid, label=True)
            patch = mask_outside(patch, roi, pad)
            if not roi.any():
                warnings.append(f"{name} covers no voxel of its patch grid: its masked patch "
                                f"is all padding")
        return patch, centre, inside, total

    tumour, t_centre, t_inside, t_vox = cut(gtv_t, 1, settings.tumour_size, "tumour")
    if t_inside < INSIDE_WARN:
        warnings.append(f"tumour extends beyond its patch ({t_inside:.0%} inside)")

    node_arr = sitk.GetArrayViewFromImage(gtv_n)
    n_labels = int(node_arr.max()) if node_arr.size else 0
    nodes: list[np.ndarray] = []
    present = np.zeros(N_NODES, dtype=np.uint8)
    node_meta: list[dict[str, Any] | None] = []
    for i, size in enumerate(settings.node_sizes):
        label = i + 1
        if label <= n_labels and (node_arr == label).any():
            patch, centre, inside, vox = cut(gtv_n, label, size, f"node{label}")
            nodes.append(patch)
            present[i] = 1
            node_meta.append({"label": label, "centre_mm": centre, "voxels": vox,
                              "fraction_inside": round(inside, 4)})
            if inside < INSIDE_WARN:
                warnings.append(f"node{label} extends beyond its patch ({inside:.0%} inside)")
        else:
            nodes.append(np.zeros(size, dtype=np.float32))
            node_meta.append(None)
    meta = {
        "patient_id": patient,
        "spacing_mm_xyz": list(settings.spacing),
        "direction": list(ct.GetDirection()),
        "hu_window": list(settings.hu_window),
        "normalisation": settings.normalisation,
        "centre_method": settings.centre,
        "tumour": {"centre_mm": t_centre, "voxels": t_vox, "size_dhw": list(settings.tumour_size),
                   "fraction_inside": round(t_inside, 4)},
        "nodes": node_meta,
        "node_sizes_dhw": [list(s) for s in settings.node_sizes],
        "n_node_labels": n_labels,
        "ct_spacing_mm_xyz": list(ct.GetSpacing()),
        "ct_size_xyz": list(ct.GetSize()),
        "warnings": warnings,
    }
    if settings.apply_mask:  # only when set: default patches stay byte-identical
        meta["apply_mask"] = True
    for w in warnings:
        log.warning("patient %s: %s", patient, w)
    return Patches(tumour=tumour, nodes=nodes, node_present=present, meta=meta)


def run_crop(patient_dir: str | Path, settings: CropSettings) -> Patches:
    """Crop one converted patient folder; write `patches.npz` (and `qc.png`) into it."""
    d = Path(patient_dir)
    ct, gtv_t, gtv_n = read_converted(d)
    patches = crop_patient(ct, gtv_t, gtv_n, settings, patient=d.name)
    # relative to the patient folder: outputs record no absolute path
    patches.meta["sources"] = {name: name for name in ("ct.nii.gz", "gtv_t.nii.gz",
                                                       "gtv_n.nii.gz")}
    patches.save(d / "patches.npz")
    if settings.qc_png:
        from mmfusion.features.qc_picture import plot_patient_qc

        plot_patient_qc(ct, gtv_t, gtv_n, patches, settings, d / "qc.png")
    return patches
