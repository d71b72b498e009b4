"""Place a mask image onto a reference (CT) grid: exactly when it lies on the same lattice,
else by nearest-neighbour resampling with a warning; refused when it misses the grid.

"Same lattice" means every mask voxel centre is a voxel centre of the reference (within
`LATTICE_TOL` voxels), whatever the axis order, flips or extent: a sub-volume as 3D Slicer
writes it, a DICOM-SEG whose frames are the CT's slices (in any order), a mask on a grid
larger than the CT. Its voxels are then copied index by index, nothing is interpolated.
Any other spacing, orientation or shift is resampled by nearest neighbour at the
reference's voxel centres (`sitk.Resample`), which is said in a warning.
Mask voxels that fall outside the reference grid are counted and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmfusion.errors import DicomError, MMFusionError

LATTICE_TOL = 1e-3  # voxels: a mask centre this close to a reference centre coincides with it
ORTHONORMAL_TOL = 1e-3


@dataclass
class Placement:
    """A mask placed on a reference grid (`image`: uint8 0/1 on the reference grid)."""

    image: object  # SimpleITK.Image
    method: str  # "same_lattice" | "nearest_neighbour"
    voxels_in: int  # non-zero mask voxels given
    voxels_outside: int  # ... of which fall outside the reference grid (same lattice only)
    warnings: list[str] = field(default_factory=list)


def index_to_world(image) -> np.ndarray:
    """(4, 4) affine of a SimpleITK image: (x, y, z, 1) voxel index -> LPS mm."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def check_direction(image, *, what: str = "mask", patient: str | None = None,
                    path: str | None = None, error: type[MMFusionError] = DicomError) -> None:
    """Refuse a grid whose direction cosines are not finite and orthonormal, or whose
    spacing is not finite and positive (a zero or NaN orientation vector in the file)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if not (np.isfinite(direction).all() and np.isfinite(spacing).all()
            and (spacing > 0).all()):
        raise error(f"{what} has a non-finite or non-positive orientation or spacing",
                    patient=patient, path=path, fix="re-export it with valid geometry")
    if np.abs(direction.T @ direction - np.eye(3)).max() > ORTHONORMAL_TOL:
        raise error(f"{what} orientation vectors are not orthonormal"
                    f" ({np.round(direction.T.ravel(), 4).tolist()})", patient=patient,
                    path=path, fix="re-export it with valid geometry")


def place_on_grid(mask, reference, *, what: str = "mask", patient: str | None = None,
                  path: str | None = None,
                  error: type[MMFusionError] = DicomError) -> Placement:
    """Put `mask` (a SimpleITK image, non-zero = inside) on the grid of `reference`.

    Returns a `Placement` whose image is uint8 0/1 with the reference's size, origin,
    spacing and direction. Raises `error` (naming `patient` and `path`) when the mask's
    geometry is invalid or when it has voxels but none of them lands on the reference.
    """
    import SimpleITK as sitk

    check_direction(mask, what=what, patient=patient, path=path, error=error)
    array = sitk.GetArrayViewFromImage(mask)  # (z, y, x)
    zyx = np.nonzero(array)
    n_in = int(zyx[0].size)
    size = np.asarray(reference.GetSize())  # (x, y, z)
    mapping = np.linalg.solve(index_to_world(reference), index_to_world(mask))
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    same_lattice = (np.abs(linear - np.round(linear)).max() < LATTICE_TOL
                    and np.abs(offset - np.round(offset)).max() < LATTICE_TOL
                    and abs(abs(np.linalg.det(np.round(linear))) - 1) < 0.5)
    warnings: list[str] = []
    if same_lattice:
        out = np.zeros(tuple(size[::-1]), dtype=np.uint8)
        xyz = np.stack([zyx[2], zyx[1], zyx[0]]).astype(np.int64)
        target = (np.round(linear).astype(np.int64) @ xyz
                  + np.round(offset).astype(np.int64)[:, None])
        inside = np.all((target >= 0) & (target < size[:, None]), axis=0)
        out[target[2, inside], target[1, inside], target[0, inside]] = 1
        outside = n_in - int(inside.sum())
        method = "same_lattice"
    else:
        resampled = sitk.Resample(sitk.Cast(mask != 0, sitk.sitkUInt8), reference,
                                  sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                  sitk.sitkUInt8)
        out = sitk.GetArrayFromImage(resampled)
        # mask voxel centres beyond the reference grid (half a voxel outside its edge)
        cont = linear @ np.stack([zyx[2], zyx[1], zyx[0]]) + offset[:, None]
        outside = int((~np.all((cont >= -0.5) & (cont <= size[:, None] - 0.5), axis=0)).sum())
        method = "nearest_neighbour"
        warnings.append(f"{what} is on another grid than the image (spacing"
                        f" {_fmt(mask.GetSpacing())} vs {_fmt(reference.GetSpacing())} mm, or"
                        " another orientation or shift): resampled by nearest neighbour")
    if n_in and not out.any():
        raise error(f"{what} does not overlap the image ({n_in} voxel(s), none on the image"
                    " grid)", patient=patient, path=path,
                    fix="check that the mask belongs to this image")
    if outside:
        warnings.append(f"{what}: {outside} of {n_in} voxel(s) lie outside the image grid"
                        " and were dropped")
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return Placement(image=image, method=method, voxels_in=n_in, voxels_outside=outside,
                     warnings=warnings)


def _fmt(values) -> str:
    return "x".join(f"{v:.4g}" for v in values)
