"""Thorax-like CT phantom of one patient: anatomy, ROI contours, label volumes, HU volume.

Patient coordinates are DICOM LPS in mm (+x patient left, +y posterior, +z superior).
Anatomy: body outline with a subcutaneous fat layer, two lungs (about -850 HU) with
vessels, heart, descending aorta, vertebral body and canal, ribs, oesophagus with an air
lumen, a primary tumour of patient-specific length and thickness along the oesophagus, and
0-5 mediastinal lymph nodes of varying size, shape and attenuation (necrotic centres in
some). Noise is spatially correlated, as in reconstructed CT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from mmfusion.synth.shapes import Ellipse, Ellipsoid, Grid, paint, rasterise_polygon

# Directions (unit vectors in the axial plane) of mediastinal node stations, seen from the
# oesophagus: right/left paraoesophageal, subcarinal, right paratracheal, aortopulmonary
# window, posterior mediastinum.
_STATIONS = np.deg2rad([180.0, -30.0, -90.0, -130.0, -60.0, 135.0])


@dataclass(frozen=True)
class PhantomSpec:
    """What the label model decided about one patient's images."""

    node_diameters: tuple[float, ...]   # short-axis diameters (mm), largest first
    node_hu: tuple[float, ...]
    necrosis: bool                      # largest node has a necrotic centre
    thickness: float                    # maximum tumour radius (mm)
    length: float                       # tumour length (mm)


@dataclass
class Roi:
    """One RTSTRUCT ROI: name, type and its closed planar polygons per slice index."""

    number: int
    name: str
    interpreted_type: str
    color: tuple[int, int, int]
    polygons: dict[int, list[np.ndarray]] = field(default_factory=dict)


@dataclass
class Phantom:
    grid: Grid
    hu: np.ndarray                      # (slices, rows, cols) float32
    rois: list[Roi]
    labels: dict[str, np.ndarray]       # ROI name -> (slices, rows, cols) bool


class _Anatomy:
    """Patient-specific geometry as functions of z."""

    def __init__(self, rng: np.random.Generator, grid: Grid, spec: PhantomSpec) -> None:
        self.grid = grid
        z = grid.z
        self.z_mid = float(z.mean())
        self.half = float(z[-1] - z[0]) / 2.0 + grid.slice_spacing / 2.0
        self.body_ax = rng.uniform(135.0, 152.0)
        self.body_ay = rng.uniform(98.0, 110.0)
        self.fat = rng.uniform(6.0, 14.0)
        self.lung_ax = rng.uniform(34.0, 39.0)
        self.lung_ay = rng.uniform(56.0, 64.0)
        self.eso_r = rng.uniform(7.0, 9.0)
        self.eso_phase = rng.uniform(0, 2 * math.pi)
        self.aorta_r = rng.uniform(9.5, 12.0)
        self.tumour_angle = rng.uniform(0, math.pi)
        self.tumour_ecc = rng.uniform(0.0, 0.15)
        self.tumour_shift = rng.uniform(0, 2 * math.pi)
        # tumour extent along z, kept inside the scanned range
        length = min(spec.length, 2 * self.half - 4 * grid.slice_spacing)
        lo = z[0] + grid.slice_spacing + length / 2
        hi = z[-1] - grid.slice_spacing - length / 2
        centre = self.z_mid + rng.uniform(-0.35, 0.35) * self.half
        self.t_centre = float(np.clip(centre, lo, hi))
        self.t_length = float(length)
        self.t_radius = max(spec.thickness, self.eso_r + 2.0)
        self.vessels = [(rng.choice([-1.0, 1.0]), rng.uniform(0.15, 0.85), rng.uniform(-0.7, 0.7),
                         rng.uniform(1.2, 2.8), rng.uniform(0, 2 * math.pi)) for _ in range(14)]
        self.rib_offset = rng.uniform(0, 25.0)

    def u(self, z: float) -> float:
        """Relative height in [-1, 1] (superior = +1)."""
        return (z - self.z_mid) / self.half

    def body(self, z: float) -> Ellipse:
        return Ellipse(0.0, 5.0, self.body_ax, self.body_ay)

    def lung(self, z: float, side: float) -> Ellipse | None:
        u = self.u(z)
        if u < -0.85:
            return None
        s = 1.0 - 0.45 * max(u - 0.2, 0.0) / 0.8 - 0.5 * max(-0.55 - u, 0.0) / 0.3
        ax, ay = self.lung_ax * s, self.lung_ay * s
        return Ellipse(side * (42.0 + ax), -5.0, ax, ay)

    def heart(self, z: float) -> Ellipse | None:
        u = self.u(z)
        if u > -0.05:
            return None
        s = math.sqrt(max(1.0 - ((u + 0.5) / 0.5) ** 2, 0.0))
        if s < 0.15:
            return None
        return Ellipse(12.0, -38.0, 28.0 * s, 32.0 * s, 0.3)

    def oesophagus_centre(self, z: float) -> tuple[float, float]:
        u = self.u(z)
        return 2.0 + 5.0 * math.sin(1.3 * u + self.eso_phase), 36.0 - 4.0 * u

    def oesophagus(self, z: float) -> Ellipse:
        cx, cy = self.oesophagus_centre(z)
        return Ellipse(cx, cy, self.eso_r, self.eso_r * 0.9)

    def tumour_radius(self, z: float) -> float:
        """Outer radius of the tumour at z (0 outside it)."""
        t = (z - (self.t_centre - self.t_length / 2)) / self.t_length
        if not 0.0 < t < 1.0:
            return 0.0
        return self.eso_r + (self.t_radius - self.eso_r) * math.sin(math.pi * t) ** 0.6

    def tumour(self, z: float) -> Ellipse | None:
        r = self.tumour_radius(z)
        if r <= 0.0:
            return None
        cx, cy = self.oesophagus_centre(z)
        shift = 0.25 * (r - self.eso_r)
        cx += shift * math.cos(self.tumour_shift)
        cy += shift * math.sin(self.tumour_shift)
        e = self.tumour_ecc
        return Ellipse(cx, cy, r * (1 + e), r * (1 - e), self.tumour_angle)

    def occupied_radius(self, z: float) -> float:
        """Radius around the oesophagus axis taken by the oesophagus or tumour at z."""
        r = self.tumour_radius(z)
        return (r * 1.2 + 0.25 * (r - self.eso_r)) if r > 0 else self.eso_r


def _place_nodes(rng: np.random.Generator, anat: _Anatomy, spec: PhantomSpec,
                 grid: Grid) -> list[Ellipsoid]:
    """Put each node beside the oesophagus/tumour at a mediastinal station, no overlaps."""
    nodes: list[Ellipsoid] = []
    z = grid.z
    for d in spec.node_diameters:
        a = d / 2.0
        b = a * rng.uniform(1.0, 1.5)
        c = a * rng.uniform(1.0, 1.6)
        for _ in range(2000):
            zc = anat.t_centre + rng.uniform(-70.0, 70.0)
            if not (z[0] + c <= zc <= z[-1] - c):
                continue
            direction = rng.choice(_STATIONS) + rng.normal(0.0, 0.25)
            zs = np.linspace(zc - c, zc + c, 9)
            clear = max(anat.occupied_radius(float(zz)) for zz in zs) + b + 2.0
            ex, ey = anat.oesophagus_centre(zc)
            cx = ex + clear * math.cos(direction)
            cy = ey + clear * math.sin(direction)
            cand = Ellipsoid(cx + rng.uniform(-1, 1), cy + rng.uniform(-1, 1), zc, a, b, c,
                             rng.uniform(0, math.pi))
            if all(math.dist((cand.cx, cand.cy, cand.cz), (o.cx, o.cy, o.cz))
                   > cand.radius + o.radius + 2.0 for o in nodes):
                nodes.append(cand)
                break
        else:  # pragma: no cover - geometry leaves ample room; a failure is a bug
            raise RuntimeError("could not place a lymph node without overlap")
    return nodes


def _rib_sections(anat: _Anatomy, z: float) -> list[Ellipse]:
    if anat.u(z) < -0.9:
        return []
    phase = (z - anat.grid.z[0] + anat.rib_offset) % 25.0
    if phase > 9.0:
        return []
    ax = anat.body_ax - anat.fat - 7.0
    ay = anat.body_ay - anat.fat - 7.0
    out = []
    for deg in (-150, -115, -75, -35, 15, 45, 135, 165):
        t = math.radians(deg)
        out.append(Ellipse(ax * math.cos(t), 5.0 + ay * math.sin(t), 5.0, 3.5, t + math.pi / 2))
    return out


def build_phantom(rng: np.random.Generator, grid: Grid, spec: PhantomSpec,
                  roi_names: dict[str, str | list[str]]) -> Phantom:
    """Build one patient's phantom.

    Args:
        rng: the patient's own generator (geometry and noise).
        grid: the CT grid.
        spec: image findings decided by the label model.
        roi_names: spellings to use: keys `tumour` (str) and `nodes` (one str per node,
            in the order of `spec.node_diameters`).
    """
    anat = _Anatomy(rng, grid, spec)
    nodes = _place_nodes(rng, anat, spec, grid)
    fov = grid.cols * grid.pixel_spacing
    if fov < 2 * (anat.body_ax + 5):
        raise ValueError(f"field of view {fov:.0f} mm is too small for the phantom body; "
                         "use matrix * pixel_spacing >= 320 mm")

    hu = np.full((grid.n_slices, grid.rows, grid.cols), -1000.0, dtype=np.float32)
    texture = gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32),
                              sigma=(0.5, 1.5, 1.5)) * 25.0
    xx, yy = np.meshgrid(grid.x, grid.y)

    rois = [
        Roi(1, "Body", "EXTERNAL", (0, 255, 0)),
        Roi(2, "Lung-L", "ORGAN", (0, 128, 255)),
        Roi(3, "Lung-R", "ORGAN", (0, 200, 255)),
        Roi(4, "Esophagus", "ORGAN", (255, 200, 0)),
        Roi(5, str(roi_names["tumour"]), "GTV", (255, 0, 0)),
    ]
    node_rois = [Roi(6 + i, name, "GTV", (255, 0, 255 - 40 * i))
                 for i, name in enumerate(roi_names["nodes"])]
    rois += node_rois

    for k, z in enumerate(grid.z):
        z = float(z)
        img = hu[k]
        body = anat.body(z)
        paint(img, grid, body, -100.0)
        inner = Ellipse(body.cx, body.cy, body.ax - anat.fat, body.ay - anat.fat)
        paint(img, grid, inner, 45.0 + texture[k] * 0.3)
        # mediastinal fat: nodes, oesophagus and vessels stand out against it
        paint(img, grid, Ellipse(2.0, 8.0, 40.0, 78.0), -90.0 + texture[k] * 0.3, within=None)
        sections: dict[int, Ellipse | None] = {1: body, 4: anat.oesophagus(z)}
        lung_mask = np.zeros(img.shape, bool)
        for number, side in ((2, 1.0), (3, -1.0)):
            lung = anat.lung(z, side)
            sections[number] = lung
            if lung is not None:
                paint(img, grid, lung, -850.0 + texture[k] * 0.6)
                lung_mask |= lung.inside(xx, yy)
        for side, fx, fy, r, ph in anat.vessels:
            lung = anat.lung(z, side)
            if lung is not None:
                vx = lung.cx + lung.ax * (fx - 0.5) * 1.4 + 4 * math.sin(3 * anat.u(z) + ph)
                vy = lung.cy + lung.ay * fy
                paint(img, grid, Ellipse(vx, vy, r, r), 35.0, within=lung_mask)
        heart = anat.heart(z)
        if heart is not None:
            paint(img, grid, heart, 40.0 + texture[k] * 0.3)
        paint(img, grid, Ellipse(24.0, 52.0, anat.aorta_r, anat.aorta_r), 48.0)
        paint(img, grid, Ellipse(0.0, 78.0, 13.0, 12.0), 700.0)
        paint(img, grid, Ellipse(0.0, 78.0, 10.5, 9.5), 280.0 + texture[k])
        paint(img, grid, Ellipse(0.0, 96.0, 5.5, 5.5), 20.0)
        for rib in _rib_sections(anat, z):
            paint(img, grid, rib, 650.0)
        eso = anat.oesophagus(z)
        paint(img, grid, eso, 38.0)
        tumour = anat.tumour(z)
        sections[5] = tumour
        if tumour is not None:
            paint(img, grid, tumour, 48.0 + texture[k] * 0.4)
        paint(img, grid, Ellipse(eso.cx, eso.cy, 2.2 if tumour is None else 1.4,
                                 2.0 if tumour is None else 1.2), -900.0)
        for i, node in enumerate(nodes):
            sec = node.section(z)
            sections[6 + i] = sec
            if sec is not None:
                paint(img, grid, sec, spec.node_hu[i] + texture[k] * 0.2)
                if spec.necrosis and i == 0:
                    paint(img, grid, sec.scaled(0.55), 12.0)
        for roi in rois:
            sec = sections.get(roi.number)
            if sec is not None and min(sec.ax, sec.ay) >= 0.75:
                roi.polygons[k] = [sec.polygon()]

    # scanner blur and correlated noise
    sigma_px = 0.6
    hu = gaussian_filter(hu, sigma=(0.0, sigma_px, sigma_px))
    noise_sd = rng.uniform(8.0, 16.0)
    noise = gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32),
                            sigma=(0.0, 0.7, 0.7))
    hu += noise * (noise_sd / max(float(noise.std()), 1e-6))

    labels = {roi.name: rasterise_roi(grid, roi) for roi in rois}
    return Phantom(grid=grid, hu=hu.astype(np.float32), rois=rois, labels=labels)


def rasterise_roi(grid: Grid, roi: Roi) -> np.ndarray:
    """The label volume of an ROI: voxel centres inside its polygons (even-odd per slice)."""
    mask = np.zeros((grid.n_slices, grid.rows, grid.cols), dtype=bool)
    for k, polys in roi.polygons.items():
        for poly in polys:
            hit = rasterise_polygon(grid, poly)
            if hit is not None:
                (rs, cs), inside = hit
                mask[k, rs, cs] ^= inside
    return mask
