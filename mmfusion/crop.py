"""Fixed-size patches around the tumour (GTV-T) and the largest lymph nodes (GTV-N).

Each patch is resampled straight from the CT onto its own grid (configured spacing and
size, the CT's direction, centred on the ROI), so the CT is never resampled whole and a
patch that reaches past the scan is padded with the lower HU window bound. Output, per
patient, one `patches.npz` (see CONTRACTS.md):

    tumour   float32 (D, H, W)        node1..node3  float32, each its own size
    node_present uint8 (3,)           meta          JSON string (centres in mm, spacing, ...)

Absent nodes are zeros with flag 0. Nodes come from the `gtv_n` label map, whose labels
are ordered by volume (1 = largest), so node1 is the largest node.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from mmfusion.errors import ConfigError, MMFusionError
from mmfusion.io import atomic_path
from mmfusion.settings import checked_section

log = logging.getLogger(__name__)

N_NODES = 3
NORMALISATIONS = ("minmax", "zscore", "none")
CENTRES = ("bbox", "mass")
# warn when a smaller share of an ROI's voxels than this lies inside its patch
INSIDE_WARN = 0.95


@dataclass(frozen=True)
class CropSettings:
    """Settings of the crop stage (config section `crop`).

    Attributes:
        spacing: output voxel spacing in mm, (x, y, z) as in SimpleITK.
        tumour_size: tumour patch size in voxels, (D, H, W) = (z, y, x).
        node_sizes: three node patch sizes (D, H, W), largest node first.
        hu_window: (low, high) HU clip window.
        normalisation: `minmax` (window -> [0, 1]), `zscore` (per patch) or `none`.
        centre: patch centre, `bbox` (ROI bounding-box centre) or `mass` (centre of mass).
        qc_png: write the QC picture.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tumour_size: tuple[int, int, int] = (42, 128, 128)
    node_sizes: tuple[tuple[int, int, int], ...] = ((22, 90, 90), (16, 68, 68), (8, 48, 48))
    hu_window: tuple[float, float] = (-160.0, 240.0)
    normalisation: str = "minmax"
    centre: str = "bbox"
    qc_png: bool = True

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ConfigError(f"crop.spacing must be three positive numbers, got {self.spacing}")
        sizes = [self.tumour_size, *self.node_sizes]
        if len(self.node_sizes) != N_NODES or any(
            len(s) != 3 or min(s) < 1 for s in sizes
        ):
            raise ConfigError(
                "crop.tumour_size must be [D, H, W] and crop.node_sizes three such lists",
                fix="see config.yaml for the expected shape",
            )
        if self.hu_window[0] >= self.hu_window[1]:
            raise ConfigError(f"crop.hu_window must be [low, high], got {self.hu_window}")
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"crop.normalisation must be one of {NORMALISATIONS}")
        if self.centre not in CENTRES:
            raise ConfigError(f"crop.centre must be one of {CENTRES}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> CropSettings:
        """Build from a config section; unknown keys are an error."""
        section = checked_section(cls, section, "crop")
        conv: dict[str, Any] = {}
        for key, value in section.items():
            if key == "node_sizes":
                conv[key] = tuple(tuple(int(v) for v in s) for s in value)
            elif key == "tumour_size":
                conv[key] = tuple(int(v) for v in value)
            elif key in ("spacing", "hu_window"):
                conv[key] = tuple(float(v) for v in value)
            else:
                conv[key] = value
        return cls(**conv)


@dataclass
class Patches:
    """The patches of one patient plus their metadata."""

    tumour: np.ndarray
    nodes: list[np.ndarray]
    node_present: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write `patches.npz` atomically."""
        arrays = {"tumour": self.tumour, "node_present": self.node_present}
        for i, node in enumerate(self.nodes, start=1):
            arrays[f"node{i}"] = node
        arrays["meta"] = np.array(json.dumps(self.meta, sort_keys=True))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_patches(path: str | Path) -> Patches:
    """Read a `patches.npz` written by `Patches.save`."""
    with np.load(path, allow_pickle=False) as npz:
        return Patches(
            tumour=npz["tumour"],
            nodes=[npz[f"node{i}"] for i in range(1, N_NODES + 1)],
            node_present=npz["node_present"],
            meta=json.loads(str(npz["meta"])),
        )


def roi_centre(mask: sitk.Image, label: int = 1, how: str = "bbox") -> tuple[float, float, float]:
    """Physical centre (x, y, z) in mm of `mask == label` (bounding box or centre of mass)."""
    arr = sitk.GetArrayViewFromImage(mask) == label  # (z, y, x)
    idx = np.argwhere(arr)
    if idx.size == 0:
        raise ValueError(f"label {label} is empty")
    if how == "mass":
        centre_zyx = idx.mean(axis=0)
    else:
        centre_zyx = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    return tuple(
        float(v) for v in mask.TransformContinuousIndexToPhysicalPoint(
            [float(c) for c in centre_zyx[::-1]]
        )
    )


def patch_grid(
    reference: sitk.Image,
    centre: tuple[float, float, float],
    size_dhw: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> sitk.Image:
    """An empty image on the patch grid: `size_dhw` voxels at `spacing`, centred on `centre`.

    The grid takes the reference's direction, so patches stay in the scan's orientation.
    """
    size_xyz = [int(s) for s in size_dhw[::-1]]
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    half = np.array([(n - 1) / 2.0 * sp for n, sp in zip(size_xyz, spacing, strict=True)])
    origin = np.array(centre) - direction @ half
    grid = sitk.Image(size_xyz, sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin([float(v) for v in origin])
    return grid


def fraction_inside(label_img: sitk.Image, label: int, grid: sitk.Image) -> tuple[float, int]:
    """Share of the ROI's voxel centres that fall inside the patch grid, and their count."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(label_img) == label)[:, ::-1]  # (n, xyz)
    if idx.size == 0:
        return 0.0, 0
    d_src = np.array(label_img.GetDirection()).reshape(3, 3)
    d_dst = np.array(grid.GetDirection()).reshape(3, 3)
    phys = np.array(label_img.GetOrigin()) + (idx * np.array(label_img.GetSpacing())) @ d_src.T
    cont = ((phys - np.array(grid.GetOrigin())) @ d_dst) / np.array(grid.GetSpacing())
    size = np.array(grid.GetSize())
    ok = np.all((cont >= -0.5) & (cont <= size - 0.5), axis=1)
    return float(ok.mean()), int(len(idx))


def resample_to(
    image: sitk.Image, grid: sitk.Image, *, label: bool, default: float = 0.0
) -> np.ndarray:
    """Resample `image` onto `grid`; returns an array (D, H, W)."""
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out_type = image.GetPixelID() if label else sitk.sitkFloat32
    res = sitk.Resample(image, grid, sitk.Transform(), interp, default, out_type)
    return sitk.GetArrayFromImage(res)


def normalise(patch_hu: np.ndarray, settings: CropSettings) -> np.ndarray:
    """Clip to the HU window and normalise as configured; float32."""
    low, high = settings.hu_window
    x = np.clip(patch_hu, low, high).astype(np.float32)
    if settings.normalisation == "minmax":
        x = (x - low) / (high - low)
    elif settings.normalisation == "zscore":
        std = float(x.std())
        x = (x - float(x.mean())) / (std if std > 0 else 1.0)
    return x.astype(np.float32)


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

    def cut(label_img: sitk.Image, label: int, size: tuple[int, int, int]) -> tuple:
        centre = roi_centre(label_img, label, settings.centre)
        grid = patch_grid(ct, centre, size, settings.spacing)
        hu = resample_to(ct_f, grid, label=False, default=low)
        inside, total = fraction_inside(label_img, label, grid)
        return normalise(hu, settings), centre, inside, total

    tumour, t_centre, t_inside, t_vox = cut(gtv_t, 1, settings.tumour_size)
    warnings: list[str] = []
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
            patch, centre, inside, vox = cut(gtv_n, label, size)
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
    for w in warnings:
        log.warning("patient %s: %s", patient, w)
    return Patches(tumour=tumour, nodes=nodes, node_present=present, meta=meta)


def read_converted(patient_dir: str | Path) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Read ct, gtv_t and gtv_n NIfTIs from a converted patient folder."""
    d = Path(patient_dir)
    paths = [d / "ct.nii.gz", d / "gtv_t.nii.gz", d / "gtv_n.nii.gz"]
    for p in paths:
        if not p.is_file():
            raise MMFusionError(
                "converted volume missing", patient=d.name, path=str(p),
                fix="run `mmfusion convert` for this patient first",
            )
    return tuple(sitk.ReadImage(str(p)) for p in paths)  # type: ignore[return-value]


def run_crop(patient_dir: str | Path, settings: CropSettings) -> Patches:
    """Crop one converted patient folder; write `patches.npz` (and `qc.png`) into it."""
    d = Path(patient_dir)
    ct, gtv_t, gtv_n = read_converted(d)
    patches = crop_patient(ct, gtv_t, gtv_n, settings, patient=d.name)
    patches.meta["sources"] = {
        name: str(d / name) for name in ("ct.nii.gz", "gtv_t.nii.gz", "gtv_n.nii.gz")
    }
    patches.save(d / "patches.npz")
    if settings.qc_png:
        from mmfusion.qc_plot import plot_patient_qc

        plot_patient_qc(ct, gtv_t, gtv_n, patches, settings, d / "qc.png")
    return patches
