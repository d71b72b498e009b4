"""Contour rasterisation on a CT grid, by geometry, with the even-odd (XOR) rule.

Every contour is mapped into continuous voxel indices (x, y, k) of the CT grid. Its plane
is matched to the nearest slice when within `plane_tolerance` (a fraction of the slice
spacing); per-contour SOP references are ignored because archives often carry stale
ones. A voxel is inside when its centre is inside under the even-odd rule over all
polygons of the ROI on that slice, so holes and nested polygons survive. A contour that
encloses no area (fewer than three distinct points, or all on one line) is not filled and
is counted (`no_area`, a warning).

The fill is a vectorised scan-line algorithm: each edge yields one crossing per pixel-centre
row it spans (half-open in y, so vertices on a row count once); a crossing at x toggles
every pixel with centre >= x; a cumulative XOR along each row gives the mask. The parts
of polygons outside the field of view are clipped for free (rows outside are dropped,
toggles left of column 0 land on column 0).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mmfusion.dicom.rtstruct import Contour


@dataclass
class RasterReport:
    """What happened to the contours of one ROI."""

    contours: int = 0
    rasterised: int = 0
    off_volume: int = 0  # plane on no slice of the series (beyond the first/last slice)
    between_slices: int = 0  # plane farther than the tolerance from every slice
    nonplanar: int = 0  # points spread over more than the tolerance along the normal
    clipped: int = 0  # partly outside the in-plane field of view
    outside_fov: int = 0  # wholly outside the in-plane field of view (nothing to fill)
    degenerate: int = 0  # fewer than 3 points, or NaN/infinite coordinates
    no_area: int = 0  # fewer than 3 distinct points in plane, or all on one line
    not_closed: dict[str, int] = field(default_factory=dict)  # POINT, OPEN_PLANAR, ...
    off_volume_planes_mm: list[float] = field(default_factory=list)

    def warnings(self, roi: str) -> list[str]:
        out = []
        if self.off_volume:
            planes = ", ".join(f"{v:.2f}" for v in sorted(set(self.off_volume_planes_mm))[:6])
            out.append(f"ROI {roi!r}: {self.off_volume} contour(s) lie on slices the CT series"
                       " does not have (offset from the first slice along the normal:"
                       f" {planes} mm); not rasterised")
        if self.between_slices:
            out.append(f"ROI {roi!r}: {self.between_slices} contour(s) lie between CT slices"
                       " (beyond the plane tolerance); not rasterised")
        if self.nonplanar:
            out.append(f"ROI {roi!r}: {self.nonplanar} contour(s) are not in a slice plane;"
                       " not rasterised")
        if self.outside_fov:
            out.append(f"ROI {roi!r}: {self.outside_fov} contour(s) lie entirely outside the CT"
                       " field of view (in plane); not rasterised")
        if self.clipped:
            out.append(f"ROI {roi!r}: {self.clipped} contour(s) extend outside the CT field of"
                       " view and were clipped")
        if self.degenerate:
            out.append(f"ROI {roi!r}: {self.degenerate} contour(s) with fewer than 3 points"
                       " or non-finite coordinates ignored")
        if self.no_area:
            out.append(f"ROI {roi!r}: {self.no_area} contour(s) enclose no area (fewer than"
                       " 3 distinct points, or all points on one line); not rasterised")
        for kind, n in sorted(self.not_closed.items()):
            out.append(f"ROI {roi!r}: {n} {kind} contour(s) reported, not rasterised")
        return out


NO_AREA_TOL = 1e-3  # voxels: every point this close to one line -> the polygon has no area


def encloses_no_area(xy: np.ndarray) -> bool:
    """Whether an in-plane polygon (N, 2), in voxel units, encloses no area: fewer than 3
    distinct points, or all points within `NO_AREA_TOL` of one line (collinear). Filling
    one would give nothing or, by rounding, stray voxels along the line."""
    if len(np.unique(np.round(xy, 6), axis=0)) < 3:
        return True
    centred = xy - xy.mean(axis=0)
    minor = np.linalg.svd(centred, full_matrices=False)[2][-1]  # normal of the best line
    return float(np.abs(centred @ minor).max()) < NO_AREA_TOL


def world_to_index(points: np.ndarray, origin: np.ndarray, spacing, direction) -> np.ndarray:
    """(N, 3) LPS mm -> (N, 3) continuous (x, y, k) voxel indices."""
    matrix = np.asarray(direction, dtype=np.float64) * np.asarray(spacing)[None, :]
    return np.linalg.solve(matrix, (np.asarray(points) - np.asarray(origin)).T).T


def rasterise_roi(
    contours: list[Contour],
    shape: tuple[int, int, int],
    origin: np.ndarray,
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    *,
    plane_tolerance: float = 0.25,
) -> tuple[np.ndarray, RasterReport]:
    """Rasterise the contours of one ROI.

    Args:
        contours: the ROI's contours (any kind; only CLOSED_PLANAR are filled).
        shape: (Z, Y, X) of the CT array.
        origin, spacing, direction: CT grid (LPS; spacing (x, y, z); direction columns).
        plane_tolerance: largest distance, as a fraction of the slice spacing, between a
            contour's plane and the slice it is assigned to.

    Returns:
        (mask (Z, Y, X) bool, report).
    """
    n_z, n_y, n_x = shape
    report = RasterReport(contours=len(contours))
    not_closed: Counter[str] = Counter()
    xs0, ys0, xs1, ys1, ks = [], [], [], [], []
    for contour in contours:
        if contour.kind != "CLOSED_PLANAR":
            not_closed[contour.kind] += 1
            continue
        pts = contour.points
        if len(pts) < 3 or not np.isfinite(pts).all():
            report.degenerate += 1
            continue
        idx = world_to_index(pts, origin, spacing, direction)
        if encloses_no_area(idx[:, :2]):
            report.no_area += 1
            continue
        k_mean = float(idx[:, 2].mean())
        if float(np.abs(idx[:, 2] - k_mean).max()) > plane_tolerance:
            report.nonplanar += 1
            continue
        k = int(np.round(k_mean))
        if abs(k_mean - k) > plane_tolerance:
            if -0.5 < k_mean < n_z - 0.5:
                report.between_slices += 1
            else:
                report.off_volume += 1
                report.off_volume_planes_mm.append(k_mean * spacing[2])
            continue
        if not 0 <= k < n_z:
            report.off_volume += 1
            report.off_volume_planes_mm.append(k_mean * spacing[2])
            continue
        x, y = idx[:, 0], idx[:, 1]
        if x.max() < -0.5 or y.max() < -0.5 or x.min() > n_x - 0.5 or y.min() > n_y - 0.5:
            report.outside_fov += 1
            continue
        if x.min() < -0.5 or y.min() < -0.5 or x.max() > n_x - 0.5 or y.max() > n_y - 0.5:
            report.clipped += 1
        report.rasterised += 1
        xs0.append(x)
        ys0.append(y)
        xs1.append(np.roll(x, -1))
        ys1.append(np.roll(y, -1))
        ks.append(np.full(len(x), k, dtype=np.int64))
    report.not_closed = dict(not_closed)
    mask = np.zeros(shape, dtype=bool)
    if not xs0:
        return mask, report
    fill_edges(mask, np.concatenate(xs0), np.concatenate(ys0), np.concatenate(xs1),
               np.concatenate(ys1), np.concatenate(ks))
    return mask, report


def fill_edges(mask: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray,
               y1: np.ndarray, k: np.ndarray) -> None:
    """Even-odd fill of closed polygons given as edges (x0, y0)->(x1, y1) on slice k.

    `mask` (Z, Y, X) bool is XOR-ed in place with the filled polygons.
    """
    _, n_y, n_x = mask.shape
    y_lo = np.minimum(y0, y1)
    y_hi = np.maximum(y0, y1)
    # Pixel-centre rows r with y_lo <= r < y_hi (half-open: a vertex on a row counts once).
    r_start = np.maximum(np.ceil(y_lo), 0).astype(np.int64)
    r_stop = np.minimum(np.ceil(y_hi), n_y).astype(np.int64)
    counts = np.maximum(r_stop - r_start, 0)
    total = int(counts.sum())
    if total == 0:
        return
    edge = np.repeat(np.arange(len(counts)), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = r_start[edge] + offsets
    ex0, ey0, ex1, ey1 = x0[edge], y0[edge], x1[edge], y1[edge]
    xc = ex0 + (rows - ey0) * (ex1 - ex0) / (ey1 - ey0)
    # Toggle at the first pixel centre >= crossing; clip to [0, n_x] (n_x = a sink column).
    cols = np.clip(np.ceil(xc), 0, n_x).astype(np.int64)
    slices = k[edge]
    uk, local_k = np.unique(slices, return_inverse=True)
    r0, r1 = int(rows.min()), int(rows.max())
    c0, c1 = int(cols.min()), int(cols.max())
    n_r, n_c = r1 - r0 + 1, c1 - c0 + 1
    flat = (local_k * n_r + (rows - r0)) * n_c + (cols - c0)
    toggles = (np.bincount(flat, minlength=len(uk) * n_r * n_c) & 1).astype(np.uint8)
    inside = np.bitwise_xor.accumulate(toggles.reshape(len(uk), n_r, n_c), axis=2)
    width = min(c1, n_x) - c0
    if width > 0:
        mask[uk, r0:r1 + 1, c0:c0 + width] ^= inside[:, :, :width].astype(bool)
