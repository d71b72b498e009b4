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


# --------------------------------------------------------------------------- index + convert

def _convert_root(root: Path, out: Path, patient: str = "PAT001", **rois):
    from mmfusion.dicom.convert import ConvertSettings, convert_patient, select_inputs
    from mmfusion.dicom.index import index_dicom

    settings = ConvertSettings.from_config(rois)
    rows = index_dicom(root, progress=False)
    inputs = select_inputs(rows, patient, settings)
    return rows, inputs, convert_patient(inputs, out, settings)


def _nifti(path: Path) -> np.ndarray:
    return _array(sitk.ReadImage(str(path)))


def test_seg_route_index_and_convert(tmp_path):
    grid = CTGrid()
    paths = write_ct(tmp_path / "root/ct", grid)
    tumour = sphere_mask(grid, (20, 18), 8, 6)
    small = sphere_mask(grid, (8, 8), 3, 2.5)
    large = sphere_mask(grid, (38, 30), 15, 4)
    seg = write_seg(tmp_path / "root/seg/seg.dcm", paths,
                    {"GTV-T": tumour, "GTV-N1": small, "GTV-N2": large, "Lung": ~tumour})
    rows, inputs, summary = _convert_root(tmp_path / "root", tmp_path / "out")
    row = next(r for r in rows if r["modality"] == "SEG")
    assert row["link_method"] == "series_uid" and row["linked_series_uid"] == grid.series_uid
    assert row["roi_names"] == ["GTV-T", "GTV-N1", "GTV-N2", "Lung"] and not row["problems"]
    assert inputs.seg == str(seg) and inputs.rtstruct == ""
    np.testing.assert_array_equal(_nifti(tmp_path / "out/gtv_t.nii.gz"), tumour)
    nodes = _nifti(tmp_path / "out/gtv_n.nii.gz")
    np.testing.assert_array_equal(nodes == 1, large)  # largest first
    np.testing.assert_array_equal(nodes == 2, small)
    assert summary["mask_source"] == "seg" and summary["rtstruct"] is None
    assert summary["seg"]["sop_instance_uid"] == pydicom.dcmread(seg).SOPInstanceUID
    assert summary["seg"]["segments"] == {"GTV-T": [1], "GTV-N1": [2], "GTV-N2": [3],
                                          "Lung": [4]}
    assert summary["tumour"] == {"rois": ["GTV-T"], "voxels": int(tumour.sum()),
                                 "volume_mm3": float(tumour.sum() * 2.0)}
    assert summary["other_rois"] == ["Lung"]
    assert summary["roi_reports"]["GTV-T"]["placement"] == ["same_lattice"]
    assert (tmp_path / "out/rois.json").is_file() and (tmp_path / "out/ct.nii.gz").is_file()


def test_fractional_seg_linked_by_frame_of_reference_only(tmp_path):
    grid = CTGrid()
    paths = write_ct(tmp_path / "root/ct", grid)
    prob = np.zeros(grid.shape, np.float32)
    prob[6:12, 10:25, 12:30] = 0.7
    prob[8, 15:18, 15:18] = 0.3  # a hole below half
    write_seg(tmp_path / "root/seg.dcm", paths, {"Tumour": prob}, fractional=True,
              references=False)
    other = CTGrid(patient_id="PAT001", study_uid=grid.study_uid, for_uid=grid.for_uid,
                   origin=(-24.0, -20.0, 100.0), shape=(30, 40, 48))
    write_ct(tmp_path / "root/other", other)  # same FoR, larger, elsewhere: not chosen
    rows, _, summary = _convert_root(tmp_path / "root", tmp_path / "out",
                                     tumour="tumou?r")
    row = next(r for r in rows if r["modality"] == "SEG")
    assert row["referenced_series_uids"] == []
    assert row["link_method"] == "frame_of_reference+geometry" and not row["problems"]
    assert row["linked_series_uid"] == grid.series_uid
    np.testing.assert_array_equal(_nifti(tmp_path / "out/gtv_t.nii.gz"), prob >= 0.5)
    assert summary["seg"]["segmentation_type"] == "FRACTIONAL"


def test_seg_frame_of_reference_mismatch_refused(tmp_path):
    from pydicom.uid import generate_uid

    grid = CTGrid()
    paths = write_ct(tmp_path / "root/ct", grid)
    write_seg(tmp_path / "root/seg.dcm", paths, {"GTV-T": sphere_mask(grid, (20, 18), 8, 6)},
              for_uid=generate_uid())
    with pytest.raises(DicomError, match=r"PAT001.*seg\.dcm.*Frame of Reference mismatch:"
                                         r" DICOM-SEG"):
        _convert_root(tmp_path / "root", tmp_path / "out")


def test_rtstruct_preferred_over_seg(tmp_path):
    from tests.dicom_fixtures import sphere_contours, write_rtstruct

    grid = CTGrid()
    paths = write_ct(tmp_path / "root/ct", grid)
    write_rtstruct(tmp_path / "root/rs.dcm", grid,
                   {"GTV-T": sphere_contours(grid, (20, 18), 8, 6)})
    write_seg(tmp_path / "root/seg.dcm", paths, {"GTV-T": sphere_mask(grid, (10, 10), 8, 4)})
    _, inputs, summary = _convert_root(tmp_path / "root", tmp_path / "out")
    assert inputs.rtstruct and not inputs.seg and summary["mask_source"] == "rtstruct"
    assert any("DICOM-SEG(s) also fit" in w and "RTSTRUCT was used" in w
               for w in summary["warnings"])
    # ... unless no ROI of the RTSTRUCT matches the tumour pattern: then the SEG
    write_rtstruct(tmp_path / "root/rs.dcm", grid,
                   {"Lung": sphere_contours(grid, (20, 18), 8, 6)})
    _, inputs, summary = _convert_root(tmp_path / "root", tmp_path / "out2")
    assert inputs.seg and summary["mask_source"] == "seg"


def test_seg_without_tumour_label_refused_naming_labels(tmp_path):
    grid = CTGrid()
    paths = write_ct(tmp_path / "root/ct", grid)
    write_seg(tmp_path / "root/seg.dcm", paths, {"Liver": sphere_mask(grid, (20, 18), 8, 6)})
    with pytest.raises(DicomError, match=r"no segment name matches.*one of: Liver"):
        _convert_root(tmp_path / "root", tmp_path / "out")


def test_damaged_seg_in_index_refused_at_convert(tmp_path):
    grid = CTGrid()
    paths = write_ct(tmp_path / "root/ct", grid)
    good = write_seg(tmp_path / "seg.dcm", paths, {"GTV-T": sphere_mask(grid, (20, 18), 8, 6)})
    data = good.read_bytes()
    (tmp_path / "root/seg.dcm").write_bytes(data[: len(data) - 40])  # pixels cut short
    with pytest.raises(DicomError, match=r"PAT001.*seg\.dcm.*damaged DICOM-SEG: truncated"):
        _convert_root(tmp_path / "root", tmp_path / "out")


def test_seg_patient_counts_as_ready(tmp_path):
    from mmfusion.cohort.preflight import _index_patients
    from mmfusion.dicom.index import index_dicom, patients_from_index, write_index
    from mmfusion.ids import sanitize_id

    grid = CTGrid(patient_id="SEG 7")
    paths = write_ct(tmp_path / "root/ct", grid)
    write_seg(tmp_path / "root/seg.dcm", paths, {"GTV-T": sphere_mask(grid, (20, 18), 8, 6)})
    rows = index_dicom(tmp_path / "root", progress=False)
    write_index(rows, tmp_path / "index.tsv")
    safe = sanitize_id("SEG 7")
    assert patients_from_index(tmp_path / "index.tsv") == [safe]
    _, rois, _ = _index_patients(rows)
    assert rois == {safe: ["GTV-T"]}


# --------------------------------------------------------------------------- real data

@pytest.mark.slow
def test_lung1_seg_from_rtstruct_masks_gives_the_same_masks(shared_data, tmp_path):
    """LUNG1-001 (TCIA NSCLC-Radiomics): masks of the RTSTRUCT route, written as a DICOM-SEG
    by highdicom over the CT, come back voxel for voxel through the SEG route."""
    import os

    from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_folder

    lung1 = shared_data / "nsclc-radiomics-lung1-001/LUNG1-001"
    settings = ConvertSettings.from_config({"tumour": "GTV-1", "node": "Spinal-Cord"})
    rt = convert_patient(inputs_from_folder(lung1, settings), tmp_path / "rt", settings)
    gtv_t = _nifti(tmp_path / "rt/gtv_t.nii.gz").astype(bool)
    gtv_n = _nifti(tmp_path / "rt/gtv_n.nii.gz")
    assert rt["tumour"]["voxels"] == 54639 and len(rt["nodes"]) == 1
    root = tmp_path / "seg_root"
    (root / "image").mkdir(parents=True)
    images = sorted((lung1 / "image").glob("*.dcm"))
    for f in images:
        os.symlink(f, root / "image" / f.name)
    write_seg(root / "seg" / "seg.dcm", images, {"GTV-1": gtv_t, "Spinal-Cord": gtv_n > 0})
    seg = convert_patient(inputs_from_folder(root, settings), tmp_path / "seg", settings)
    assert seg["mask_source"] == "seg" and rt["mask_source"] == "rtstruct"
    np.testing.assert_array_equal(_nifti(tmp_path / "seg/gtv_t.nii.gz"), gtv_t)
    np.testing.assert_array_equal(_nifti(tmp_path / "seg/gtv_n.nii.gz"), gtv_n)
    np.testing.assert_array_equal(_nifti(tmp_path / "seg/ct.nii.gz"),
                                  _nifti(tmp_path / "rt/ct.nii.gz"))
    assert seg["tumour"] == rt["tumour"] and seg["nodes"] == rt["nodes"]
    assert seg["ct"] == rt["ct"]
