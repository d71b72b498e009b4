"""One image series as the index groups it, and its geometry checks at index time.

The checks record problems (never raise) and compute the series' LPS extent, which
linking uses to match RTSTRUCT contours to a CT series by Frame of Reference + geometry.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mmfusion.dicom.problems import Problem, add_problem
from mmfusion.errors import DicomError

if TYPE_CHECKING:
    from mmfusion.dicom.series import SliceGeometry


@dataclass
class SeriesGroup:
    """The index row of one image series, its files' header records and its extent."""

    rows: dict
    records: list[dict]
    bbox: tuple[np.ndarray, np.ndarray] | None = None  # LPS extent of the slice planes
    geometry: SliceGeometry | None = None  # the sorted slices, when the sort succeeded
    # (code, message) of a per-file problem -> the files (relative paths) that have it
    file_problems: dict[tuple[Problem, str], list[str]] = field(
        default_factory=lambda: defaultdict(list))


def check_series_geometry(series: SeriesGroup) -> None:
    """Fill rows/columns/n_positions/slice_spacing, record geometry problems, set `bbox`."""
    from mmfusion.dicom.series import find_duplicate_runs, sort_slices

    recs = series.records
    row = series.rows
    row["rows"] = recs[0].get("rows", "")
    row["columns"] = recs[0].get("columns", "")
    if len({(r.get("rows"), r.get("columns")) for r in recs}) > 1:
        add_problem(row, Problem.MIXED_SLICE_SIZES, "slices of different sizes in one series")
    if any(r.get("position") is None or r.get("orientation") is None
           or r.get("pixel_spacing") is None for r in recs):
        add_problem(row, Problem.MISSING_GEOMETRY,
                    "slices without ImagePositionPatient/Orientation/PixelSpacing")
        return
    try:
        geom = sort_slices(np.array([r["position"] for r in recs]),
                           np.array([r["orientation"] for r in recs]),
                           np.array([r["pixel_spacing"] for r in recs]),
                           fallback_thickness=recs[0].get("thickness"))
    except (DicomError, ValueError) as err:
        add_problem(row, Problem.GEOMETRY_REFUSED, str(err))
        return
    dups = find_duplicate_runs(geom)
    row["n_positions"] = len(recs) - sum(len(run) - 1 for run in dups)
    row["slice_spacing"] = round(geom.slice_spacing, 6)
    if dups:
        add_problem(row, Problem.DUPLICATE_POSITIONS,
                    f"{sum(len(r) - 1 for r in dups)} duplicate slice position(s)")
    if row["n_positions"] == 1:
        add_problem(row, Problem.SINGLE_SLICE, "single-slice series")
    if np.abs(geom.normal - np.array([0, 0, 1])).max() > 1e-3 and \
            np.abs(geom.normal - np.array([0, 0, -1])).max() > 1e-3:
        add_problem(row, Problem.OBLIQUE, "oblique (non-axial) orientation")
    n_x, n_y = int(row["columns"]), int(row["rows"])
    corners = []
    for pos in (geom.positions[0], geom.positions[-1]):
        for i in (0, n_x - 1):
            for j in (0, n_y - 1):
                corners.append(pos + i * geom.pixel_spacing[0] * geom.row_dir
                               + j * geom.pixel_spacing[1] * geom.col_dir)
    corners = np.array(corners)
    half = 0.5 * geom.slice_spacing * np.abs(geom.normal)
    series.bbox = (corners.min(axis=0) - half, corners.max(axis=0) + half)
    series.geometry = geom


def continues_series(series: SeriesGroup, rec: dict) -> bool:
    """Whether the image header `rec` (of another series, patient or modality) is a slice
    that would extend `series` by one position at either end, on the same grid: a slice
    whose damaged UID, PatientID or Modality split it off (the volume would silently lose
    it). Needs `series.geometry`."""
    geom = series.geometry
    if geom is None or any(rec.get(k) is None for k in ("position", "orientation",
                                                         "pixel_spacing")):
        return False
    first = series.records[int(geom.order[0])]
    if (rec.get("rows"), rec.get("columns")) != (first.get("rows"), first.get("columns")) \
            or np.abs(np.subtract(rec["orientation"], first["orientation"])).max() > 1e-3 \
            or np.abs(np.subtract(rec["pixel_spacing"], first["pixel_spacing"])).max() > 1e-4:
        return False
    offset = np.asarray(rec["position"], dtype=float) - geom.positions[0]
    k = float(offset @ geom.normal) / geom.slice_spacing
    n = len(np.unique(np.round(geom.positions @ geom.normal, 2)))
    in_plane = offset - (offset @ geom.normal) * geom.normal
    return (min(abs(k + 1), abs(k - n)) < 0.1
            and float(np.linalg.norm(in_plane)) < 0.1 * min(geom.pixel_spacing))
