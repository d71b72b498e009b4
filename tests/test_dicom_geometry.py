"""DICOM -> NIfTI geometry and rasterisation on synthetic shapes with analytic volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_folder
from mmfusion.dicom.rasterize import rasterise_roi
from mmfusion.dicom.rtstruct import Contour
from mmfusion.dicom.series import load_ct_series
from tests.dicom_fixtures import (
    CTGrid,
    circle,
    oblique_grid,
    sphere_contours,
    write_ct,
    write_rtstruct,
)

RADIUS = 12.0
CENTRE_XY = (24.0, 20.0)  # mm from the slice origin along row/col directions
CENTRE_K = 10


def _convert(folder, out, **rois):
    settings = ConvertSettings.from_config(rois or None)
    return convert_patient(inputs_from_folder(folder, settings), out, settings)


def _sphere_case(tmp_path, grid):
    write_ct(tmp_path / "dicom" / "ct", grid)
    write_rtstruct(tmp_path / "dicom" / "rs.dcm", grid,
                   {"GTV-T": sphere_contours(grid, CENTRE_XY, CENTRE_K, RADIUS)})
    return _convert(tmp_path / "dicom", tmp_path / "out")


@pytest.mark.parametrize("grid_factory", [CTGrid, oblique_grid], ids=["axial", "oblique"])
def test_sphere_volume_and_position(tmp_path, grid_factory):
    grid = grid_factory()
    summary = _sphere_case(tmp_path, grid)
    analytic = 4 / 3 * np.pi * RADIUS**3
    assert summary["tumour"]["volume_mm3"] == pytest.approx(analytic, rel=0.02)
    # The mask's centroid, mapped through the NIfTI affine (RAS), is the sphere centre.
    mask = nib.load(tmp_path / "out" / "gtv_t.nii.gz")
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0).mean(axis=0)
    ras = mask.affine @ np.append(ijk, 1.0)
    lps_centre = grid.world(CENTRE_XY[0] / grid.spacing[0], CENTRE_XY[1] / grid.spacing[1],
                            CENTRE_K)
    expected_ras = lps_centre * np.array([-1, -1, 1])
    assert np.allclose(ras[:3], expected_ras, atol=0.3)


@pytest.mark.parametrize("grid_factory", [CTGrid, oblique_grid], ids=["axial", "oblique"])
def test_ct_geometry_matches_itk_reader(tmp_path, grid_factory):
    """Origin/spacing/direction and slice order agree with ITK's GDCM series reader."""
    grid = grid_factory()
    files = write_ct(tmp_path / "ct", grid)
    ours = load_ct_series(files).to_sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    itk = reader.Execute()
    assert np.allclose(ours.GetOrigin(), itk.GetOrigin(), atol=1e-3)
    assert np.allclose(ours.GetSpacing(), itk.GetSpacing(), atol=1e-4)
    assert np.allclose(ours.GetDirection(), itk.GetDirection(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(itk))


def test_geometric_sort_and_hu(tmp_path):
    """Slices sorted by position (InstanceNumber runs the other way, names shuffled);
    HU from the rescale (unsigned storage, intercept -1024)."""
    grid = CTGrid()
    volume = load_ct_series(write_ct(tmp_path, grid))
    assert volume.array.dtype == np.int16
    assert np.array_equal(volume.array[:, 0, 0], np.arange(grid.shape[0]) * 10)
    assert np.allclose(volume.origin, grid.origin)


def test_nifti_lps_to_ras_affine(tmp_path):
    grid = CTGrid()
    _sphere_case(tmp_path, grid)
    ct = nib.load(tmp_path / "out" / "ct.nii.gz")
    expected = np.diag([-1.0, -1.0, 2.0, 1.0])
    expected[:3, 3] = np.array(grid.origin) * np.array([-1, -1, 1])
    assert np.allclose(ct.affine, expected)
    assert ct.shape == grid.shape[::-1]  # NIfTI is (x, y, z)


def test_shell_with_hole_is_preserved(tmp_path):
    """Outer and inner circles on each slice: even-odd keeps the hole (a tube wall)."""
    grid = CTGrid()
    contours = []
    for k in range(4, 16):
        contours += [circle(grid, CENTRE_XY, 15.0, k), circle(grid, CENTRE_XY, 7.0, k)]
    mask, report = rasterise_roi([Contour("CLOSED_PLANAR", c) for c in contours], grid.shape,
                                 np.array(grid.origin), grid.spacing, np.eye(3))
    analytic = np.pi * (15.0**2 - 7.0**2) * 12 * grid.spacing[2]
    volume = mask.sum() * np.prod(grid.spacing)
    assert volume == pytest.approx(analytic, rel=0.02)
    assert not mask[10, 20, 24]  # centre of the hole
    assert mask[10, 20, 24 + 11]  # in the wall
    assert report.rasterised == 24


def test_nested_island_in_hole(tmp_path):
    """Three nested polygons: ring plus an island inside the hole (even-odd)."""
    grid = CTGrid()
    polys = [circle(grid, CENTRE_XY, r, 10) for r in (18.0, 10.0, 4.0)]
    mask, _ = rasterise_roi([Contour("CLOSED_PLANAR", p) for p in polys], grid.shape,
                            np.array(grid.origin), grid.spacing, np.eye(3))
    assert mask[10, 20, 24] and not mask[10, 20, 24 + 7] and mask[10, 20, 24 + 14]


def test_two_islands_on_one_slice(tmp_path):
    grid = CTGrid()
    polys = [circle(grid, (10.3, 20.4), 7.3, k) for k in (9, 10)]
    polys += [circle(grid, (36.3, 20.4), 7.3, k) for k in (9, 10)]
    mask, report = rasterise_roi([Contour("CLOSED_PLANAR", p) for p in polys], grid.shape,
                                 np.array(grid.origin), grid.spacing, np.eye(3))
    assert mask[10, 20, 10] and mask[10, 20, 36] and not mask[10, 20, 23]
    assert mask.sum() * 2.0 == pytest.approx(4 * np.pi * 7.3**2 * 2.0, rel=0.02)
    assert report.rasterised == 4


def test_clipping_outside_field_of_view(tmp_path):
    grid = CTGrid()
    poly = circle(grid, (0.0, 20.0), 10.0, 10)  # centred on the left image border
    mask, report = rasterise_roi([Contour("CLOSED_PLANAR", poly)], grid.shape,
                                 np.array(grid.origin), grid.spacing, np.eye(3))
    assert report.clipped == 1
    assert any("clipped" in w for w in report.warnings("X"))
    # About half the disc (columns x >= 0) is inside the image.
    assert mask.sum() == pytest.approx(np.pi * 100 / 2, rel=0.06)


def test_point_open_and_offslice_contours_are_reported(tmp_path):
    grid = CTGrid()
    good = circle(grid, CENTRE_XY, 5.0, 10)
    contours = [
        Contour("CLOSED_PLANAR", good),
        Contour("POINT", good[:1]),
        Contour("OPEN_PLANAR", good[:20]),
        Contour("CLOSED_PLANAR", circle(grid, CENTRE_XY, 5.0, 25)),  # beyond the last slice
        Contour("CLOSED_PLANAR", circle(grid, CENTRE_XY, 5.0, 10.5)),  # between slices
    ]
    mask, report = rasterise_roi(contours, grid.shape, np.array(grid.origin), grid.spacing,
                                 np.eye(3))
    assert report.rasterised == 1
    assert report.not_closed == {"POINT": 1, "OPEN_PLANAR": 1}
    assert report.off_volume == 1 and report.between_slices == 1
    text = " ".join(report.warnings("R"))
    assert "POINT" in text and "OPEN_PLANAR" in text and "does not have" in text
    assert mask[10].sum() > 0 and mask.sum() == mask[10].sum()


def test_plane_tolerance_accepts_small_offsets(tmp_path):
    grid = CTGrid()
    poly = circle(grid, CENTRE_XY, 5.0, 10.2)  # 0.4 mm off a 2 mm slice
    mask, report = rasterise_roi([Contour("CLOSED_PLANAR", poly)], grid.shape,
                                 np.array(grid.origin), grid.spacing, np.eye(3))
    assert report.rasterised == 1 and mask[10].any()


def test_node_label_map_ordered_by_volume(tmp_path):
    grid = CTGrid(shape=(24, 48, 64))
    write_ct(tmp_path / "dicom", grid)
    rois = {
        "GTV-T": sphere_contours(grid, (32.0, 24.0), 12, 8.0),
        # two components in one ROI: a small and a large sphere
        "GTV-N1": sphere_contours(grid, (8.0, 8.0), 4, 3.5)
        + sphere_contours(grid, (54.0, 38.0), 18, 7.0),
        "GTVn2": sphere_contours(grid, (54.0, 10.0), 5, 5.0),
        "Body": [circle(grid, (32.0, 24.0), 20.0, k) for k in range(24)],
        "Empty": [],
    }
    write_rtstruct(tmp_path / "dicom" / "rs.dcm", grid, rois)
    summary = _convert(tmp_path / "dicom", tmp_path / "out")
    labels = nib.load(tmp_path / "out" / "gtv_n.nii.gz")
    assert labels.get_data_dtype() == np.uint16
    data = np.asarray(labels.dataobj)
    assert sorted(np.unique(data)) == [0, 1, 2, 3]
    sizes = [int((data == k).sum()) for k in (1, 2, 3)]
    assert sizes == sorted(sizes, reverse=True)
    assert [n["roi"] for n in summary["nodes"]] == ["GTV-N1", "GTVn2", "GTV-N1"]
    assert summary["other_rois"] == ["Body", "Empty"]
    rois_json = json.loads((tmp_path / "out" / "rois.json").read_text())
    assert rois_json["tumour"]["rois"] == ["GTV-T"]
    assert rois_json["nodes"][0]["volume_mm3"] == pytest.approx(
        4 / 3 * np.pi * 7.0**3, rel=0.05)
    assert any("2 separate components" in w for w in rois_json["warnings"])


def test_no_node_roi_gives_empty_map(tmp_path):
    grid = CTGrid()
    summary = _sphere_case(tmp_path, grid)
    data = np.asarray(nib.load(tmp_path / "out" / "gtv_n.nii.gz").dataobj)
    assert data.shape == grid.shape[::-1] and not data.any()
    assert summary["nodes"] == []
    assert any("GTV-N is empty" in w for w in summary["warnings"])
