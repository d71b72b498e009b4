"""Tiny CT volumes and masks written as NIfTI / NRRD / MetaImage / Slicer .seg.nrrd files.

A 24 x 40 x 36 (z, y, x) CT in HU (air -1000, a body ellipse of soft tissue), a spherical
tumour and three nodes of different sizes (so "largest first" is visible), on a grid with a
non-trivial origin and spacing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (24, 40, 36)  # (z, y, x)
SPACING = (1.5, 1.25, 3.0)  # (x, y, z) mm
ORIGIN = (-20.5, 31.0, -402.0)
NODE_CENTRES = ((6, 10, 8), (18, 30, 26), (12, 30, 8))  # (z, y, x); radii 3, 2, 1.5 voxels
NODE_RADII = (3.0, 2.0, 1.5)


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius ** 2


def volumes() -> dict[str, np.ndarray]:
    """ct (int16 HU), tumour (bool), nodes (uint16 label map: 1..3 by size)."""
    rng = np.random.default_rng(7)
    z, y, x = np.indices(SHAPE)
    body = ((y - 20) / 17) ** 2 + ((x - 18) / 16) ** 2 <= 1
    ct = np.where(body, 40, -1000).astype(np.int16)
    ct += rng.integers(-20, 20, SHAPE).astype(np.int16)
    tumour = _ball((12, 18, 18), 4.5)
    nodes = np.zeros(SHAPE, np.uint16)
    for label, (centre, radius) in enumerate(zip(NODE_CENTRES, NODE_RADII, strict=True), 1):
        nodes[_ball(centre, radius)] = label
    return {"ct": ct, "tumour": tumour, "nodes": nodes}


def image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetOrigin(tuple(float(v) for v in origin))
    if direction is not None:
        img.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return img


def write(array: np.ndarray, path: Path, **geometry) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image(array, **geometry), str(path), True)
    return path


def write_slicer_seg(path: Path, regions: dict[str, np.ndarray], *, crop: bool = True,
                     layers: bool = False, reference=None) -> Path:
    """A 3D Slicer segmentation of named boolean regions (z, y, x) on the fixture grid (or
    `reference`'s), cropped to their common bounding box, overlapping ones in layers."""
    import slicerio
    from scipy import ndimage

    ref = reference if reference is not None else image(np.zeros(SHAPE, np.int16))
    union = np.any(np.stack(list(regions.values())), axis=0)
    box = ndimage.find_objects(union.astype(np.uint8))[0] if crop else \
        tuple(slice(0, n) for n in union.shape)
    start = [int(box[2].start), int(box[1].start), int(box[0].start)]  # (x, y, z)
    ijk = np.eye(4)
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    ijk[:3, :3] = direction * np.asarray(ref.GetSpacing())[None, :]
    ijk[:3, 3] = ref.TransformIndexToPhysicalPoint(start)
    segments = []
    if layers:
        voxels = np.stack([r[box].astype(np.uint8).transpose(2, 1, 0) for r in regions.values()])
        for i, name in enumerate(regions):
            segments.append({"id": f"Segment_{i + 1}", "name": name, "labelValue": 1,
                             "layer": i})
    else:
        labels = np.zeros(union[box].shape, np.uint8)
        for i, (name, region) in enumerate(regions.items(), start=1):
            labels[region[box]] = i
            segments.append({"id": f"Segment_{i}", "name": name, "labelValue": i, "layer": 0})
        voxels = labels.transpose(2, 1, 0)
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": ijk,
                                            "encoding": "gzip", "segments": segments})
    return path


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
