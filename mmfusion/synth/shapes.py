"""Planar ellipses and ellipsoids in patient (LPS, mm) coordinates, with rasterisation.

The phantom's ROI label volumes are defined as the rasterisation of the very polygons
written to the RTSTRUCT (voxel centre inside polygon), so contours and labels agree by
construction; CT intensities are painted from the analytic ellipses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as MplPath


@dataclass(frozen=True)
class Grid:
    """An axial CT grid: voxel (k, i, j) has its centre at (x0 + j*px, y0 + i*px, z0 + k*dz)."""

    rows: int
    cols: int
    n_slices: int
    pixel_spacing: float
    slice_spacing: float
    x0: float
    y0: float
    z0: float

    @property
    def z(self) -> np.ndarray:
        return self.z0 + self.slice_spacing * np.arange(self.n_slices)

    @property
    def x(self) -> np.ndarray:
        return self.x0 + self.pixel_spacing * np.arange(self.cols)

    @property
    def y(self) -> np.ndarray:
        return self.y0 + self.pixel_spacing * np.arange(self.rows)

    def bbox(self, xmin: float, xmax: float, ymin: float, ymax: float
             ) -> tuple[slice, slice] | None:
        """Row/column slices of the pixel centres inside an axis-aligned box (mm)."""
        px = self.pixel_spacing
        j0 = max(0, math.ceil((xmin - self.x0) / px))
        j1 = min(self.cols - 1, math.floor((xmax - self.x0) / px))
        i0 = max(0, math.ceil((ymin - self.y0) / px))
        i1 = min(self.rows - 1, math.floor((ymax - self.y0) / px))
        if j1 < j0 or i1 < i0:
            return None
        return slice(i0, i1 + 1), slice(j0, j1 + 1)


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in an axial plane: centre (cx, cy), semi-axes (ax, ay), rotation (rad)."""

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0

    def scaled(self, factor: float) -> Ellipse:
        return Ellipse(self.cx, self.cy, self.ax * factor, self.ay * factor, self.angle)

    def extent(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounding box (xmin, xmax, ymin, ymax)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        hx = math.hypot(self.ax * c, self.ay * s)
        hy = math.hypot(self.ax * s, self.ay * c)
        return self.cx - hx, self.cx + hx, self.cy - hy, self.cy + hy

    def polygon(self, tolerance_mm: float = 0.05) -> np.ndarray:
        """Closed-contour vertices (N, 2), counter-clockwise.

        Vertices are spaced so that no chord strays more than `tolerance_mm` from the
        ellipse (chord s deviates s**2 / (8 r) at radius of curvature r).
        """
        a, b = max(self.ax, self.ay), min(self.ax, self.ay)
        r_min = b * b / a
        step = math.sqrt(8.0 * r_min * tolerance_mm)
        perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
        n = max(16, int(math.ceil(perimeter / step)))
        t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
        c, s = math.cos(self.angle), math.sin(self.angle)
        ex, ey = self.ax * np.cos(t), self.ay * np.sin(t)
        return np.stack([self.cx + c * ex - s * ey, self.cy + s * ex + c * ey], axis=1)

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Analytic membership of points (broadcast arrays, mm)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.cx, y - self.cy
        u = (c * dx + s * dy) / self.ax
        v = (-s * dx + c * dy) / self.ay
        return u * u + v * v <= 1.0


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid with one axis along z: in-plane semi-axes (a, b) rotated by `angle`."""

    cx: float
    cy: float
    cz: float
    a: float
    b: float
    c: float
    angle: float = 0.0

    def section(self, z: float) -> Ellipse | None:
        """Its cross-section with the plane at height z, or None."""
        s = 1.0 - ((z - self.cz) / self.c) ** 2
        if s <= 0.0:
            return None
        r = math.sqrt(s)
        return Ellipse(self.cx, self.cy, self.a * r, self.b * r, self.angle)

    @property
    def radius(self) -> float:
        return max(self.a, self.b, self.c)


def paint(img: np.ndarray, grid: Grid, ellipse: Ellipse, value: float | np.ndarray,
          within: np.ndarray | None = None) -> None:
    """Set `img` (rows, cols) to `value` at pixel centres inside `ellipse` (in place).

    `value` may be a full-slice array (texture); `within` restricts painting to a mask.
    """
    box = grid.bbox(*ellipse.extent())
    if box is None:
        return
    rs, cs = box
    yy, xx = np.meshgrid(grid.y[rs], grid.x[cs], indexing="ij")
    m = ellipse.inside(xx, yy)
    if within is not None:
        m &= within[rs, cs]
    sub = img[rs, cs]
    sub[m] = value[rs, cs][m] if isinstance(value, np.ndarray) else value


def rasterise_polygon(grid: Grid, polygon: np.ndarray
                      ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Pixel centres of one slice inside a closed polygon (mm): (box, boolean sub-mask)."""
    box = grid.bbox(polygon[:, 0].min(), polygon[:, 0].max(),
                    polygon[:, 1].min(), polygon[:, 1].max())
    if box is None:
        return None
    rs, cs = box
    yy, xx = np.meshgrid(grid.y[rs], grid.x[cs], indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    inside = MplPath(polygon).contains_points(pts).reshape(xx.shape)
    return box, inside
