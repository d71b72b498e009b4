"""DICOM-SEG: the reader (`mmfusion.dicom.seg`), grid placement (`mask_grid`), SEGs written
by dcmqi (../shared/data/dcmqi-seg-examples, BSD-3, Herz et al. 2017) and by highdicom,
bad SEG files, and the SEG route of index + convert (synthetic and LUNG1-001)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from mmfusion.dicom.mask_grid import place_on_grid
from mmfusion.dicom.seg import read_seg
from mmfusion.dicom.series import load_ct_series
from mmfusion.errors import DicomError
from tests.dicom_fixtures import CTGrid, sphere_mask, write_ct, write_seg

DCMQI = "dcmqi-seg-examples/segmentations"


def _array(image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


# --------------------------------------------------------------------------- synthetic

@pytest.fixture()
def ct(tmp_path):
    grid = CTGrid()
    return grid, write_ct(tmp_path / "ct", grid)


def _on_ct(seg_path: Path, paths, number: int) -> np.ndarray:
    reference = load_ct_series(paths).to_sitk()
    placed = place_on_grid(read_seg(seg_path).segment_image(number), reference)
    assert placed.method == "same_lattice" and not placed.warnings
    return _array(placed.image)


def test_binary_seg_segments_and_masks(ct, tmp_path):
    grid, paths = ct
    tumour = sphere_mask(grid, (20, 18), 8, 6)
    nodes = sphere_mask(grid, (10, 10), 3, 3) | sphere_mask(grid, (35, 30), 15, 3)  # gap
    path = write_seg(tmp_path / "seg.dcm", paths, {"GTV-T": tumour, "GTV-N": nodes})
    seg = read_seg(path)
    assert seg.segmentation_type == "BINARY"
    assert [(s.number, s.label) for s in seg.segments] == [(1, "GTV-T"), (2, "GTV-N")]
    assert seg.labels() == ["GTV-T", "GTV-N"]
    assert all(s.referenced_series_uids == (grid.series_uid,) for s in seg.segments)
    assert all(s.frame_of_reference_uid == grid.for_uid for s in seg.segments)
    assert seg.referenced_series_uids == [grid.series_uid]
    image = seg.segment_image(2)
    assert image.GetPixelID() == sitk.sitkUInt8 and set(np.unique(_array(image))) == {0, 1}
    np.testing.assert_array_equal(_on_ct(path, paths, 1), tumour)
    np.testing.assert_array_equal(_on_ct(path, paths, 2), nodes)  # frames with a gap


def test_fractional_seg_thresholded_at_half(ct, tmp_path):
    grid, paths = ct
    prob = np.zeros(grid.shape, np.float32)
    prob[5:9, 10:20, 10:20] = 0.6
    prob[5:9, 12:14, 12:14] = 0.45  # below half: outside
    prob[6, 15, 15] = 0.51
    path = write_seg(tmp_path / "frac.dcm", paths, {"GTV": prob}, fractional=True)
    assert read_seg(path).segmentation_type == "FRACTIONAL"
    np.testing.assert_array_equal(_on_ct(path, paths, 1), prob >= 0.5)


def test_overlapping_segments_kept_apart(ct, tmp_path):
    grid, paths = ct
    a = sphere_mask(grid, (20, 18), 8, 6)
    b = sphere_mask(grid, (24, 18), 8, 6)
    path = write_seg(tmp_path / "ov.dcm", paths, {"A": a, "B": b})
    np.testing.assert_array_equal(_on_ct(path, paths, 1), a)
    np.testing.assert_array_equal(_on_ct(path, paths, 2), b)


def test_place_on_grid_resamples_with_warning_and_refuses_no_overlap(ct):
    grid, paths = ct
    reference = load_ct_series(paths).to_sitk()
    mask = sitk.Image(24, 20, 10, sitk.sitkUInt8)  # half the resolution, same extent
    mask.SetSpacing((2.0, 2.0, 4.0))
    mask.SetOrigin(tuple(np.asarray(reference.GetOrigin()) + [0.5, 0.5, 1.0]))
    mask[5:10, 5:10, 3:6] = 1
    placed = place_on_grid(mask, reference)
    assert placed.method == "nearest_neighbour"
    assert "nearest neighbour" in placed.warnings[0]
    assert _array(placed.image).sum() == 5 * 5 * 3 * 8  # each coarse voxel -> 2x2x2
    mask.SetOrigin((500.0, 500.0, 500.0))
    with pytest.raises(DicomError, match="does not overlap"):
        place_on_grid(mask, reference, patient="P1", path="m.nrrd")


def test_place_on_grid_sub_volume_and_overhang(ct):
    grid, paths = ct
    reference = load_ct_series(paths).to_sitk()
    full = np.zeros(grid.shape, np.uint8)
    full[2:5, 3:9, 40:48] = 1
    crop = sitk.GetImageFromArray(full[1:6, 2:12, 38:48].copy())  # a Slicer-like crop
    crop.SetSpacing(reference.GetSpacing())
    crop.SetDirection(reference.GetDirection())
    crop.SetOrigin(reference.TransformIndexToPhysicalPoint((38, 2, 1)))
    placed = place_on_grid(crop, reference)
    assert placed.method == "same_lattice" and placed.voxels_outside == 0
    np.testing.assert_array_equal(_array(placed.image), full)
    crop.SetOrigin(reference.TransformIndexToPhysicalPoint((42, 2, 1)))  # 4 columns beyond
    placed = place_on_grid(crop, reference)
    assert placed.voxels_outside == 3 * 6 * 4
    assert "outside the image grid" in placed.warnings[0]


# --------------------------------------------------------------------------- bad files

def _one_line_error(path, match: str) -> DicomError:
    with pytest.raises(DicomError, match=match) as info:
        seg = read_seg(path, patient="P9")
        for s in seg.segments:
            seg.segment_image(s.number)
    text = str(info.value)
    assert "\n" not in text and "patient P9" in text and str(path) in text
    return info.value


def test_bad_seg_files_give_one_line_errors(ct, tmp_path):
    grid, paths = ct
    good = write_seg(tmp_path / "good.dcm", paths, {"GTV": sphere_mask(grid, (20, 18), 8, 6)})
    data = good.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(cut, "unreadable|truncated")
    text = tmp_path / "notes.dcm"
    text.write_text("not dicom at all\n")
    _one_line_error(text, "unreadable")
    _one_line_error(paths[0], "not a DICOM-SEG")
    ds = pydicom.dcmread(good)
    del ds.SegmentSequence
    ds.save_as(tmp_path / "nosegments.dcm")
    _one_line_error(tmp_path / "nosegments.dcm", "malformed DICOM-SEG")
    ds = pydicom.dcmread(good)
    ds.PixelData = ds.PixelData[:16]
    ds.save_as(tmp_path / "shortpixels.dcm")
    _one_line_error(tmp_path / "shortpixels.dcm", "DICOM-SEG")
    for bad in ([0.0] * 6, [1, 0, 0, 1, 0, 0], ["nan", 0, 0, 0, 1, 0], [2, 0, 0, 0, 1, 0]):
        ds = pydicom.dcmread(good)
        plane = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        plane.ImageOrientationPatient = bad
        ds.save_as(tmp_path / "orient.dcm")
        _one_line_error(tmp_path / "orient.dcm", "unusable ImageOrientationPatient")


# --------------------------------------------------------------------------- dcmqi SEGs

@pytest.mark.parametrize(("seg", "nrrd", "label", "value"), [
    ("liver.dcm", "liver_seg.nrrd", "Liver", 1),
    ("23x38x3/seg/label.seg", "23x38x3/nrrd/label.nrrd", "Liver", 1),  # no .dcm suffix
    ("sparse-labelmap-noppv.dcm", "sparse_labelmap_noppv_seg.nrrd", "Liver", 1),
    ("partial_overlaps.dcm", "partial_overlaps-1.nrrd", "GREEN", 1),
    ("partial_overlaps.dcm", "partial_overlaps-2.nrrd", "ORANGE", 2),
    ("partial_overlaps.dcm", "partial_overlaps-3.nrrd", "PURPLE", 3),
    ("partial_overlaps.dcm", "partial_overlaps-1.nrrd", "LIGHT_BLUE", 4),
    ("partial_overlaps.dcm", "partial_overlaps-1.nrrd", "DARK_BLUE", 5),
])
def test_dcmqi_seg_equals_its_source_labelmap(shared_data, seg, nrrd, label, value):
    folder = shared_data / DCMQI
    obj = read_seg(folder / seg)
    number = next(s.number for s in obj.segments if s.label == label)
    source = sitk.ReadImage(str(folder / nrrd))
    placed = place_on_grid(obj.segment_image(number), source)
    assert placed.method == "same_lattice" and placed.voxels_outside == 0
    mask = _array(placed.image)
    assert mask.any()
    np.testing.assert_array_equal(mask, _array(source) == value)


def test_dcmqi_seg_labels_and_shapes(shared_data):
    folder = shared_data / DCMQI
    overlaps = read_seg(folder / "partial_overlaps.dcm")
    assert overlaps.labels() == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    masks = [_array(overlaps.segment_image(s.number)) for s in overlaps.segments]
    assert all(m.shape == (3, 512, 512) and m.any() for m in masks)
    assert (sum(m.astype(int) for m in masks) > 1).any()  # segments overlap
    labelmap = read_seg(folder / "sparse-labelmap-ppv5.dcm")
    assert labelmap.segmentation_type == "LABELMAP" and "Liver" in labelmap.labels()
    neoplasm = read_seg(shared_data / "dcmqi-seg-examples/sr-example/seg.dcm")
    assert neoplasm.labels() == ["Neoplasm, Primary"]
    image = neoplasm.segment_image(1)
    assert image.GetSize()[:2] == (128, 128) and _array(image).any()
