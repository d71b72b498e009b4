"""CT series geometry and loading: geometric slice sort, checks, HU, a SimpleITK image.

Conventions. DICOM patient coordinates are LPS (mm). ImageOrientationPatient holds the
row direction (the direction in which the column index grows, "x") and the column
direction (row index grows, "y"); PixelSpacing is (between rows, between columns). The
slice normal is row x column; slices are sorted by their position projected on it,
never by InstanceNumber or file name. The returned SimpleITK image is in LPS with the
direction cosines set, so `sitk.WriteImage(..., "x.nii.gz")` writes a correct RAS
qform/sform (ITK flips the first two axes when writing NIfTI).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfusion.errors import DicomError

ORIENTATION_TOL = 1e-3  # cosine components equal within this (e.g. -1.2e-16 vs 0)
UNIT_TOL = 1e-2  # |length - 1| of an orientation vector above this: refused (garbled value)
POSITION_TOL_MM = 1e-2  # two slice positions closer than this are duplicates


@dataclass(frozen=True)
class SeriesChecks:
    """Policy thresholds for a CT series (see `check_slice_positions`)."""

    missing_gap_factor: float = 1.5  # a gap > factor x median spacing = missing slice(s)
    uneven_tolerance: float = 0.05  # |gap - median| / median above this: refused
    uneven_warn: float = 0.01  # ... above this (and below the refusal): a warning


@dataclass
class SliceGeometry:
    """Sorted geometry of a series: one entry per kept slice."""

    order: np.ndarray  # indices into the input list, sorted along the normal
    positions: np.ndarray  # (n, 3) ImagePositionPatient, sorted
    row_dir: np.ndarray  # (3,) direction of increasing column index
    col_dir: np.ndarray  # (3,) direction of increasing row index
    normal: np.ndarray  # (3,) row_dir x col_dir
    pixel_spacing: tuple[float, float]  # (x = between columns, y = between rows)
    slice_spacing: float
    warnings: list[str] = field(default_factory=list)

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) matrix whose columns are the x, y, z axis directions (LPS)."""
        return np.stack([self.row_dir, self.col_dir, self.normal], axis=1)


def orientation_of(iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row direction, column direction and normal from ImageOrientationPatient.

    ValueError (one line) for NaN/infinite values, a zero vector, vectors that are not
    unit length (within `UNIT_TOL`; rounding is renormalised) or not orthogonal."""
    values = np.asarray([float(v) for v in iop], dtype=np.float64)
    if values.shape != (6,):
        raise ValueError(f"ImageOrientationPatient must have 6 values, got {len(values)}")
    if not np.isfinite(values).all():
        raise ValueError("ImageOrientationPatient has NaN or infinite values")
    row, col = values[:3], values[3:]
    norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    if min(norms) < 1e-6:
        raise ValueError("ImageOrientationPatient has a zero direction vector")
    if max(abs(n - 1) for n in norms) > UNIT_TOL:
        raise ValueError("ImageOrientationPatient direction vectors are not unit vectors"
                         f" (lengths {norms[0]:.4g}, {norms[1]:.4g})")
    row = row / norms[0]
    col = col / norms[1]
    if abs(float(row @ col)) > ORIENTATION_TOL:
        raise ValueError("ImageOrientationPatient row and column directions are not orthogonal")
    return row, col, np.cross(row, col)


def sort_slices(
    positions: np.ndarray,
    iops: np.ndarray,
    pixel_spacings: np.ndarray,
    *,
    patient: str | None = None,
    where: str | None = None,
    fallback_thickness: float | None = None,
    checks: SeriesChecks | None = None,
) -> SliceGeometry:
    """Sort slices geometrically and check the spacing policy.

    Args:
        positions: (n, 3) ImagePositionPatient per file.
        iops: (n, 6) ImageOrientationPatient per file.
        pixel_spacings: (n, 2) PixelSpacing per file.
        fallback_thickness: slice spacing for a single-slice series (SliceThickness).

    Duplicate positions are NOT resolved here (they need pixel data); the returned order
    keeps them adjacent and `find_duplicate_runs` lists them.

    Raises:
        DicomError: mixed orientation or pixel spacing, missing slices, uneven spacing,
            gantry tilt, or a single slice without a usable thickness.
    """
    checks = checks or SeriesChecks()
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    iops = np.asarray(iops, dtype=np.float64).reshape(-1, 6)
    pixel_spacings = np.asarray(pixel_spacings, dtype=np.float64).reshape(-1, 2)
    n = len(positions)
    if n == 0:
        raise DicomError("the CT series has no image slices", patient=patient, path=where)
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOL:
        raise DicomError(
            "slices of the series have different ImageOrientationPatient (mixed series or"
            " a localizer in the folder)", patient=patient, path=where,
            fix="keep one axial/oblique acquisition per SeriesInstanceUID",
        )
    if np.abs(pixel_spacings - pixel_spacings[0]).max() > 1e-4:
        raise DicomError("slices of the series have different PixelSpacing",
                         patient=patient, path=where)
    try:
        row, col, normal = orientation_of(iops[0])
    except ValueError as err:
        raise DicomError(str(err), patient=patient, path=where) from None
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    sorted_pos = positions[order]
    warnings: list[str] = []
    unique_depth = depth[np.concatenate([[True], np.diff(depth) > POSITION_TOL_MM])]
    if len(unique_depth) == 1:
        if not fallback_thickness or fallback_thickness <= 0:
            raise DicomError(
                "the series has a single slice position and no SliceThickness, so the slice"
                " spacing is unknown", patient=patient, path=where,
                fix="supply the whole CT series",
            )
        spacing = float(fallback_thickness)
        warnings.append(f"single-slice series: slice spacing taken from SliceThickness"
                        f" ({spacing:g} mm)")
    else:
        gaps = np.diff(unique_depth)
        median = float(np.median(gaps))
        big = gaps > checks.missing_gap_factor * median
        if big.any():
            at = ", ".join(f"{unique_depth[i]:.2f}->{unique_depth[i + 1]:.2f} mm"
                           for i in np.flatnonzero(big)[:5])
            raise DicomError(
                f"missing slice(s): gap larger than {checks.missing_gap_factor}x the median"
                f" spacing {median:.3f} mm at {at}", patient=patient, path=where,
                fix="re-export the complete CT series",
            )
        deviation = float(np.abs(gaps - median).max() / median)
        if deviation > checks.uneven_tolerance:
            raise DicomError(
                f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm"
                f" (median {median:.3f}); NIfTI needs one spacing", patient=patient,
                path=where, fix="resample the series to uniform spacing before export",
            )
        if deviation > checks.uneven_warn:
            warnings.append(f"slice gaps vary by up to {deviation:.1%} of the median"
                            f" {median:.3f} mm; the mean gap is used")
        spacing = float((unique_depth[-1] - unique_depth[0]) / (len(unique_depth) - 1))
        # The offset between slices must run along the normal (no gantry tilt / shear).
        step = (sorted_pos[-1] - sorted_pos[0]) / (unique_depth[-1] - unique_depth[0])
        if np.linalg.norm(step - normal) > 1e-2:
            raise DicomError(
                "slice positions do not advance along the slice normal (gantry tilt or"
                " sheared series); such a grid cannot be written as NIfTI without"
                " resampling", patient=patient, path=where,
                fix="resample the series (e.g. de-tilt) before conversion",
            )
    ps = pixel_spacings[0]
    return SliceGeometry(order=order, positions=sorted_pos, row_dir=row, col_dir=col,
                         normal=normal, pixel_spacing=(float(ps[1]), float(ps[0])),
                         slice_spacing=spacing, warnings=warnings)


def find_duplicate_runs(geometry: SliceGeometry) -> list[list[int]]:
    """Runs of positions (indices into the sorted order) that coincide."""
    depth = geometry.positions @ geometry.normal
    runs: list[list[int]] = []
    current = [0]
    for i in range(1, len(depth)):
        if depth[i] - depth[i - 1] <= POSITION_TOL_MM:
            current.append(i)
        else:
            if len(current) > 1:
                runs.append(current)
            current = [i]
    if len(current) > 1:
        runs.append(current)
    return runs


@dataclass
class CTVolume:
    """A CT volume in HU on its DICOM grid, plus provenance."""

    array: np.ndarray  # (Z, Y, X) HU, int16 or float32
    origin: np.ndarray  # (3,) LPS position of voxel (0, 0, 0)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    direction: np.ndarray  # (3, 3) columns = x, y, z axis directions
    series_uid: str
    frame_of_reference_uid: str
    files: list[str]
    sop_uids: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_sitk(self):  # -> SimpleITK.Image
        """SimpleITK image (LPS, direction cosines set)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    def index_to_world(self) -> np.ndarray:
        """(4, 4) matrix mapping (x, y, z, 1) voxel indices to LPS mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        matrix[:3, 3] = self.origin
        return matrix


@dataclass
class _Slice:
    path: str
    position: list[float]
    orientation: list[float]
    pixel_spacing: list[float]
    thickness: float
    series_uid: str
    frame_of_reference_uid: str
    sop_uid: str
    slope: float
    intercept: float
    pixels: np.ndarray


def _one_line(err: Exception) -> str:
    """`Type: message` of an exception on one line (decoder errors span several)."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def _read_slice(path: str, patient: str | None) -> _Slice:
    import pydicom

    from mmfusion.dicom.reading import quiet_pydicom

    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(path)
    except Exception as err:
        raise DicomError(f"unreadable DICOM file ({_one_line(err)})",
                         patient=patient, path=path) from None
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds:
            raise DicomError(f"CT slice lacks {tag}", patient=patient, path=path)
    try:
        with quiet_pydicom():  # a failed decoder logs a whole traceback
            pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for truncated/compressed data
        raise DicomError(
            f"cannot read pixel data ({_one_line(err)})", patient=patient,
            path=path, fix="check the file is complete (truncated copy?); compressed"
            " transfer syntaxes need pylibjpeg/gdcm handlers",
        ) from None
    if pixels.ndim != 2:
        raise DicomError(f"expected one 2D frame per file, got pixel shape {pixels.shape}",
                         patient=patient, path=path)
    try:
        with quiet_pydicom():
            slope = getattr(ds, "RescaleSlope", None)
            intercept = getattr(ds, "RescaleIntercept", None)
            numbers = {tag: _numbers(ds, tag) for tag in (
                "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")}
            thickness = float(getattr(ds, "SliceThickness", 0) or 0)
            slope = float(slope) if slope not in (None, "") else 1.0
            intercept = float(intercept) if intercept not in (None, "") else 0.0
            if not (np.isfinite(slope) and np.isfinite(intercept) and slope != 0):
                raise ValueError(f"RescaleSlope {slope}, RescaleIntercept {intercept}")
            if not np.isfinite(thickness):
                raise ValueError(f"SliceThickness {thickness}")
            uids = [str(getattr(ds, k, "") or "") for k in (
                "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")]
            orientation_of(numbers["ImageOrientationPatient"])  # zero, non-orthonormal
    except Exception as err:  # garbled values raise assorted errors (even NotImplementedError)
        raise DicomError(f"CT slice has an unreadable geometry or rescale value"
                         f" ({_one_line(err)})", patient=patient, path=path,
                         fix="re-export the CT series (ImageOrientationPatient must be two"
                         " orthonormal direction vectors)") from None
    return _Slice(
        path=path,
        position=numbers["ImagePositionPatient"],
        orientation=numbers["ImageOrientationPatient"],
        pixel_spacing=numbers["PixelSpacing"],
        thickness=thickness,
        series_uid=uids[0],
        frame_of_reference_uid=uids[1],
        sop_uid=uids[2],
        slope=slope,
        intercept=intercept,
        pixels=pixels,
    )


_COUNTS = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}


def _numbers(ds, tag: str) -> list[float]:
    """Finite values of a multi-valued geometry tag; ValueError if garbled."""
    value = ds[tag].value
    values = [float(v) for v in (value if isinstance(value, list | tuple) or
                                 hasattr(value, "__iter__") and not isinstance(value, str)
                                 else [value])]
    if len(values) != _COUNTS[tag] or not np.isfinite(values).all():
        raise ValueError(f"{tag} = {values!r}")
    return values


def load_ct_series(
    paths: Sequence[str | Path],
    *,
    patient: str | None = None,
    checks: SeriesChecks | None = None,
) -> CTVolume:
    """Read a CT series (one SeriesInstanceUID) into a `CTVolume` in HU.

    Duplicate positions: identical pixels -> the copy is dropped with a warning;
    different pixels -> DicomError. Missing slices, uneven spacing: see `sort_slices`.
    """
    paths = [str(p) for p in paths]
    where = str(Path(paths[0]).parent) if paths else None
    slices = [_read_slice(path, patient) for path in paths]
    if not slices:
        raise DicomError("the CT series has no image slices", patient=patient, path=where)
    series_uids = {s.series_uid for s in slices}
    if len(series_uids) != 1:
        raise DicomError(f"files from {len(series_uids)} series were given as one series",
                         patient=patient, path=where)
    geometry = sort_slices(
        np.array([s.position for s in slices]),
        np.array([s.orientation for s in slices]),
        np.array([s.pixel_spacing for s in slices]),
        patient=patient, where=where, fallback_thickness=slices[0].thickness, checks=checks,
    )
    warnings = list(geometry.warnings)
    ordered = [slices[i] for i in geometry.order]
    shapes = {s.pixels.shape for s in ordered}
    if len(shapes) != 1:
        raise DicomError(f"slices have different sizes {sorted(shapes)}", patient=patient,
                         path=where)
    keep = np.ones(len(ordered), dtype=bool)
    for run in find_duplicate_runs(geometry):
        a = ordered[run[0]]
        for j in run[1:]:
            b = ordered[j]
            if not (np.array_equal(a.pixels, b.pixels) and a.slope == b.slope
                    and a.intercept == b.intercept):
                raise DicomError(
                    f"two slices share one position but differ in pixels: {a.path} and"
                    f" {b.path}", patient=patient, path=b.path,
                    fix="remove the wrong slice or split the series",
                )
            keep[j] = False
            warnings.append(f"duplicate slice dropped (identical pixels): {b.path}")
    kept = [s for s, k in zip(ordered, keep, strict=True) if k]
    positions = geometry.positions[keep]
    integral = all(s.slope == round(s.slope) and s.intercept == round(s.intercept)
                   for s in kept)
    if integral:
        lows = [int(s.pixels.min()) * int(s.slope) + int(s.intercept) for s in kept]
        highs = [int(s.pixels.max()) * int(s.slope) + int(s.intercept) for s in kept]
        integral = min(lows + highs) >= -32768 and max(lows + highs) <= 32767
    hu = np.empty((len(kept),) + kept[0].pixels.shape,
                  dtype=np.int16 if integral else np.float32)
    for k, s in enumerate(kept):  # slice by slice: no full-volume temporaries
        if integral:
            hu[k] = s.pixels.astype(np.int32) * int(s.slope) + int(s.intercept)
        else:
            hu[k] = s.pixels.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        s.pixels = None  # release as we go
    return CTVolume(
        array=hu,
        origin=positions[0].copy(),
        spacing=(geometry.pixel_spacing[0], geometry.pixel_spacing[1], geometry.slice_spacing),
        direction=geometry.direction,
        series_uid=kept[0].series_uid,
        frame_of_reference_uid=kept[0].frame_of_reference_uid,
        files=[s.path for s in kept],
        sop_uids=[s.sop_uid for s in kept],
        warnings=warnings,
    )
