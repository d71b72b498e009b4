"""What the crop stage and its QC picture share: crop settings, the patch record and its
file (`patches.npz`), and the patch grid / resampling geometry.

Kept apart from `crop.py` and `qc_picture.py` so both use it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from mmfusion.errors import ConfigError
from mmfusion.io import atomic_path
from mmfusion.settings import check_choice, schema_defaults

N_NODES = 3
NORMALISATIONS = ("minmax", "zscore", "none")
CENTRES = ("bbox", "mass")
# warn when a smaller share of an ROI's voxels than this lies inside its patch
INSIDE_WARN = 0.95


@dataclass(frozen=True)
@schema_defaults("crop")
class CropSettings:
    """Settings of the crop stage (config section `crop`; defaults from the config schema:
    the reference code's sizes, 1 mm voxels, tumour 42x128x128).

    Attributes:
        spacing: output voxel spacing in mm, (x, y, z) as in SimpleITK.
        tumour_size: tumour patch size in voxels, (D, H, W) = (z, y, x).
        node_sizes: three node patch sizes (D, H, W), largest node first.
        hu_window: (low, high) HU clip window.
        normalisation: `minmax` (window -> [0, 1]), `zscore` (per patch) or `none`.
        centre: patch centre, `bbox` (ROI bounding-box centre) or `mass` (centre of mass).
        apply_mask: the paper's masked CT: voxels outside the patch's own ROI take the
            padding value (see `crop.normalise_patch`); false keeps surrounding tissue.
        qc_png: write the QC picture.
    """

    spacing: tuple[float, float, float]
    tumour_size: tuple[int, int, int]
    node_sizes: tuple[tuple[int, int, int], ...]
    hu_window: tuple[float, float]
    normalisation: str
    centre: str
    apply_mask: bool
    qc_png: bool = True

    def __post_init__(self) -> None:
        try:
            canonical = {
                "spacing": tuple(float(v) for v in self.spacing),
                "tumour_size": tuple(int(v) for v in self.tumour_size),
                "node_sizes": tuple(tuple(int(v) for v in s) for s in self.node_sizes),
                "hu_window": tuple(float(v) for v in self.hu_window),
            }
        except (TypeError, ValueError) as err:
            raise ConfigError(f"crop sizes, spacing and window must be lists of numbers: {err}",
                              fix="see config.yaml for the expected shape") from err
        for key, value in canonical.items():
            object.__setattr__(self, key, value)
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
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ConfigError(f"crop.hu_window must be [low, high], got {self.hu_window}")
        check_choice("crop.normalisation", self.normalisation, NORMALISATIONS)
        check_choice("crop.centre", self.centre, CENTRES)
        if not isinstance(self.apply_mask, bool):
            raise ConfigError(f"crop.apply_mask must be true or false, got {self.apply_mask!r}",
                              fix="set crop.apply_mask to true or false")


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
