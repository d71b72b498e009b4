"""Degenerate geometry in the DICOM route (issue 21, item 4): image orientation vectors that
are zero, NaN or not orthonormal, and contours that enclose no area, end in a one-line
refusal (recorded as an exclusion by the convert stage) or a warning: never a traceback
and never a silently different mask."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mmfusion.cli import main
from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_folder
from mmfusion.dicom.index import index_dicom
from mmfusion.dicom.problems import Problem
from mmfusion.dicom.rasterize import rasterise_roi
from mmfusion.dicom.rtstruct import Contour
from mmfusion.errors import DicomError
from tests.dicom_fixtures import CTGrid, circle, sphere_contours, write_ct, write_rtstruct

SETTINGS = ConvertSettings()


def _case(root: Path, grid: CTGrid, rois: dict | None = None) -> list[Path]:
    files = write_ct(root / "ct", grid, shuffle_names=False)
    rois = rois if rois is not None else {"GTV-T": sphere_contours(grid, (8.0, 8.0), 3.5, 4.0)}
    write_rtstruct(root / "rs.dcm", grid, rois)
    return files


def _set_orientation(files: list[Path], iop: list) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        with warnings.catch_warnings():  # pydicom warns about a 'nan' DS value
            warnings.simplefilter("ignore")
            ds.ImageOrientationPatient = iop
            ds.save_as(f)


def _status(root: Path, out: Path) -> dict:
    index = out / "index.tsv"
    out.mkdir(parents=True, exist_ok=True)
    assert main(["index", str(root), "--out", str(index), "--workers", "1",
                 "--no-progress"]) == 0
    status = out / "convert_status.json"
    assert main(["convert", "--index", str(index), "--patient", "P1", "--out", str(out),
                 "--status-out", str(status)]) == 0
    return json.loads(status.read_text())


# --------------------------------------------------------------------------- orientation

@pytest.mark.parametrize(("iop", "why"), [
    ([0, 0, 0, 0, 1, 0], "zero direction vector"),
    ([0, 0, 0, 0, 0, 0], "zero direction vector"),
    (["nan", 0, 0, 0, 1, 0], "NaN"),
    ([1, 0, 0, 1, 0, 0], "not orthogonal"),
    ([1, 0, 0, 0.1, 0.994987, 0], "not orthogonal"),  # unit vectors, 84 deg apart
    ([2, 0, 0, 0, 1, 0], "not unit vectors"),
])
def test_bad_image_orientation_is_refused_naming_patient_and_file(tmp_path, iop, why):
    grid = CTGrid(patient_id="P1", shape=(6, 16, 16))
    files = _case(tmp_path / "root", grid)
    _set_orientation(files, iop)
    rows = index_dicom(tmp_path / "root", progress=False)
    ct = next(r for r in rows if r["modality"] == "CT")
    assert Problem.GEOMETRY_REFUSED in ct["problem_codes"] or \
        Problem.MISSING_GEOMETRY in ct["problem_codes"]
    with pytest.raises(DicomError) as info:
        convert_patient(inputs_from_folder(tmp_path / "root", SETTINGS), tmp_path / "o",
                        SETTINGS)
    text = str(info.value)
    assert "\n" not in text and "patient P1" in text and "ImageOrientationPatient" in text
    assert why.lower() in text.lower() and "file ct/img_" in text  # relative to the root
    status = _status(tmp_path / "root", tmp_path / "out")
    assert status["status"] == "excluded" and why.lower() in status["reason"].lower()
    assert not (tmp_path / "out" / "gtv_t.nii.gz").exists()


def test_orientation_rounding_is_accepted(tmp_path):
    """Cosines written with few digits (length 1 +- 1e-4) are renormalised, not refused."""
    grid = CTGrid(patient_id="P1", shape=(6, 16, 16))
    files = _case(tmp_path / "root", grid)
    _set_orientation(files, [1.0001, 0, 0, 0, 0.9999, 0])
    summary = convert_patient(inputs_from_folder(tmp_path / "root", SETTINGS),
                              tmp_path / "o", SETTINGS)
    assert summary["tumour"]["voxels"] > 0
    assert summary["ct"]["direction_lps"] == [1, 0, 0, 0, 1, 0, 0, 0, 1]


# --------------------------------------------------------------------------- contours

def _flat(grid: CTGrid, points_xy: list[tuple[float, float]], k: int) -> np.ndarray:
    return np.array([grid.world(x, y, k) for x, y in points_xy])


def test_contours_enclosing_no_area_are_not_filled_and_said():
    grid = CTGrid(shape=(6, 32, 32))
    good = circle(grid, (16.0, 16.0), 6.0, 2)
    no_area = [
        _flat(grid, [(3, 3), (3, 3), (20, 20)], 1),  # two distinct points
        _flat(grid, [(4, 4), (4, 4), (4, 4), (4, 4)], 1),  # one point
        _flat(grid, [(2.0, 5.5), (10.0, 5.5), (25.0, 5.5), (12.0, 5.5)], 3),  # on a row
        _flat(grid, [(1.0, 1.0), (9.5, 9.5), (20.25, 20.25), (5.5, 5.5)], 4),  # diagonal
    ]
    contours = [Contour("CLOSED_PLANAR", c) for c in [good, *no_area]]
    shape = grid.shape
    origin = np.asarray(grid.origin)
    direction = np.stack([grid.row_dir, grid.col_dir, grid.normal], axis=1)
    mask, report = rasterise_roi(contours, shape, origin, grid.spacing, direction)
    alone, _ = rasterise_roi(contours[:1], shape, origin, grid.spacing, direction)
    np.testing.assert_array_equal(mask, alone)  # the degenerate ones add nothing
    assert report.no_area == 4 and report.rasterised == 1
    assert any("4 contour(s) enclose no area" in w for w in report.warnings("GTV-T"))
    # a thin but real polygon (half a voxel wide) is still filled
    thin = _flat(grid, [(2.0, 10.0), (28.0, 10.0), (28.0, 10.5), (2.0, 10.5)], 1)
    mask, report = rasterise_roi([Contour("CLOSED_PLANAR", thin)], shape, origin,
                                 grid.spacing, direction)
    assert report.no_area == 0 and mask[1, 10, 2:28].all()


def test_tumour_of_only_no_area_contours_is_refused_and_excluded(tmp_path):
    grid = CTGrid(patient_id="P1", shape=(6, 16, 16))
    line = [_flat(grid, [(2.0, 4.0), (12.0, 4.0), (7.0, 4.0)], k) for k in (2, 3)]
    _case(tmp_path / "root", grid, {"GTV-T": line})
    with pytest.raises(DicomError, match=r"patient P1, file rs\.dcm.*have no voxel.*enclose"
                                         r" no area"):
        convert_patient(inputs_from_folder(tmp_path / "root", SETTINGS), tmp_path / "o",
                        SETTINGS)
    status = _status(tmp_path / "root", tmp_path / "out")
    assert status["status"] == "excluded" and "enclose no area" in status["reason"]


def test_no_area_contour_in_a_used_roi_is_a_warning_in_rois_json(tmp_path):
    grid = CTGrid(patient_id="P1", shape=(8, 16, 16))
    contours = sphere_contours(grid, (8.0, 8.0), 3.5, 4.0)
    contours.append(_flat(grid, [(1.0, 1.0), (6.0, 6.0), (3.0, 3.0)], 1))
    _case(tmp_path / "root", grid, {"GTV-T": contours})
    summary = convert_patient(inputs_from_folder(tmp_path / "root", SETTINGS),
                              tmp_path / "o", SETTINGS)
    assert summary["roi_reports"]["GTV-T"]["no_area"] == 1
    assert any("enclose no area" in w for w in summary["warnings"])
