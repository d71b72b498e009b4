"""ROI name matching and the GTV-N label map (one label per node, largest first)."""

from __future__ import annotations

import re

import numpy as np

from mmfusion.errors import ConfigError


def compile_roi_regex(pattern: str, key: str) -> re.Pattern[str]:
    """Compile a case-insensitive full-match ROI regex; ConfigError if it is invalid."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise ConfigError(f"rois.{key} is not a valid regular expression: {err}",
                          fix=f"fix the pattern {pattern!r}") from None


def match_rois(names: list[str], pattern: re.Pattern[str]) -> list[str]:
    """Names that fully match `pattern` (case-insensitive), in the given order."""
    return [name for name in names if pattern.fullmatch(name.strip())]


def node_label_map(
    masks: list[tuple[str, tuple[slice, ...], np.ndarray]],
    shape: tuple[int, int, int],
    voxel_volume: float,
) -> tuple[np.ndarray, list[dict], list[str]]:
    """Label map of lymph nodes from node ROI masks.

    Every 3D connected component (26-connectivity) of every node ROI is one node; nodes
    are numbered 1..k by decreasing voxel count. A voxel claimed by two nodes keeps the
    larger node's label (reported as a warning).

    Args:
        masks: (ROI name, bounding-box slices, bool mask inside the box) per node ROI.
        shape: (Z, Y, X) of the full grid.
        voxel_volume: mm^3 per voxel.

    Returns:
        (labels (Z, Y, X) uint16, one dict per node, warnings).
    """
    from scipy import ndimage

    warnings: list[str] = []
    pieces = []  # (voxels, roi, box in the full grid, component mask within the box)
    for name, roi_box, mask in masks:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count > 1:
            warnings.append(f"ROI {name!r} has {count} separate components; each is a node")
        for index, box in enumerate(ndimage.find_objects(labelled), start=1):
            component = labelled[box] == index
            full = tuple(slice(o.start + b.start, o.start + b.stop)
                         for o, b in zip(roi_box, box, strict=True))
            pieces.append((int(component.sum()), name, full, component))
    pieces.sort(key=lambda p: -p[0])
    if len(pieces) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 node components")
    labels = np.zeros(shape, dtype=np.uint16)
    nodes = []
    overlap = 0
    for label, (voxels, name, box, component) in enumerate(pieces, start=1):
        view = labels[box]
        free = component & (view == 0)
        kept = int(free.sum())
        overlap += voxels - kept
        view[free] = label
        zs, ys, xs = np.nonzero(component)
        nodes.append({
            "label": label,
            "roi": name,
            "voxels": kept,
            "volume_mm3": round(kept * voxel_volume, 3),
            "centroid_index_zyx": [round(float(v.mean() + b.start), 2)
                                   for v, b in zip((zs, ys, xs), box, strict=True)],
        })
    if overlap:
        warnings.append(f"{overlap} voxel(s) belong to more than one node; each kept the"
                        " label of the larger node")
    return labels, nodes, warnings
