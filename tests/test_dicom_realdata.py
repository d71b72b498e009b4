"""Real public data (../shared/data, see each PROVENANCE.md): conversions agree with
plastimatch and with the IBSI phantom's NIfTI mask; the quirky sets fail clearly."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_folder
from mmfusion.dicom.index import index_dicom
from mmfusion.dicom.rasterize import rasterise_roi
from mmfusion.dicom.rtstruct import parse_rtstruct
from mmfusion.dicom.series import load_ct_series
from mmfusion.errors import DicomError
from tests.conftest import require_tool

LUNG1 = "nsclc-radiomics-lung1-001/LUNG1-001"
IBSI = "ibsi1-ct-phantom"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _flat_links(files: list[str], folder: Path) -> Path:
    """plastimatch reads one flat folder: link CT slices and the RTSTRUCT into it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        os.symlink(f, folder / f"{i:04d}_{Path(f).name}")
    return folder


def _plastimatch_masks(files: list[str], tmp: Path) -> dict[str, np.ndarray]:
    tool = require_tool("plastimatch")
    flat = _flat_links(files, tmp / "flat")
    subprocess.run([tool, "convert", "--input", str(flat), "--output-prefix",
                    str(tmp / "masks"), "--prefix-format", "nii.gz", "--xor-contours"],
                   check=True, capture_output=True)
    return {p.name[: -len(".nii.gz")]: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in (tmp / "masks").glob("*.nii.gz")}


def _all_roi_masks(ct_files, rtstruct):
    ct = load_ct_series(ct_files)
    rs = parse_rtstruct(rtstruct)
    return ct, {roi.name: rasterise_roi(roi.contours, ct.array.shape, ct.origin, ct.spacing,
                                        ct.direction)[0] for roi in rs.rois}


@pytest.mark.slow
def test_ibsi_phantom_matches_supplied_nifti(shared_data, tmp_path):
    settings = ConvertSettings.from_config({"tumour": "GTV-1"})
    summary = convert_patient(inputs_from_folder(shared_data / IBSI / "dicom", settings),
                              tmp_path, settings)
    ours = nib.load(tmp_path / "gtv_t.nii.gz")
    ref = nib.load(shared_data / IBSI / "nifti" / "mask" / "mask.nii.gz")
    assert ours.shape == ref.shape == (204, 201, 60)
    assert np.allclose(ours.affine, ref.affine, atol=1e-3)
    assert dice(np.asarray(ours.dataobj), np.asarray(ref.dataobj)) >= 0.99
    assert summary["tumour"]["voxels"] == pytest.approx(125256, rel=0.01)
    ct = np.asarray(nib.load(tmp_path / "ct.nii.gz").dataobj)
    ref_ct = np.asarray(nib.load(shared_data / IBSI / "nifti" / "image" / "phantom.nii.gz")
                        .dataobj)
    assert np.array_equal(ct, np.round(ref_ct))


@pytest.mark.slow
@pytest.mark.external
@pytest.mark.parametrize("case", [IBSI, LUNG1])
def test_masks_agree_with_plastimatch(shared_data, tmp_path, case):
    root = shared_data / case
    ct_files = sorted(glob.glob(str(root / ("dicom/image/*.dcm" if case == IBSI
                                            else "image/*.dcm"))))
    rtstruct = glob.glob(str(root / ("dicom/mask/*.dcm" if case == IBSI
                                     else "mask_rtstruct/*.dcm")))[0]
    reference = _plastimatch_masks([*ct_files, rtstruct], tmp_path)
    _, ours = _all_roi_masks(ct_files, rtstruct)
    assert set(ours) == set(reference)
    for name, mask in ours.items():
        assert mask.shape == reference[name].shape
        assert dice(mask, reference[name]) >= 0.99, name


@pytest.mark.slow
def test_lung1_geometry_and_tumour(shared_data, tmp_path):
    settings = ConvertSettings.from_config({"tumour": "GTV-1"})
    summary = convert_patient(inputs_from_folder(shared_data / LUNG1, settings), tmp_path,
                              settings)
    ct = nib.load(tmp_path / "ct.nii.gz")
    assert ct.shape == (512, 512, 134)
    # LPS origin (-249.51, -460.51, -681.5) -> RAS; z rises with the slice index.
    assert np.allclose(ct.affine[:3, 3], [249.5117, 460.5117, -681.5], atol=1e-3)
    assert np.allclose(np.diag(ct.affine)[:3], [-0.9765625, -0.9765625, 3.0])
    assert ct.get_data_dtype() == np.int16
    assert summary["tumour"]["voxels"] == 54639  # plastimatch gives the same count
    assert summary["nodes"] == []


def _linked_copy(tmp_path: Path, shared_data: Path, drop: int | None = None,
                 duplicate: int | None = None) -> Path:
    folder = tmp_path / "LUNG1-001"
    folder.mkdir()
    images = sorted((shared_data / LUNG1 / "image").glob("*.dcm"))
    for i, f in enumerate(images):
        if i != drop:
            os.symlink(f, folder / f.name)
    if duplicate is not None:
        os.symlink(images[duplicate], folder / "copy.dcm")
    os.symlink(next((shared_data / LUNG1 / "mask_rtstruct").glob("*.dcm")), folder / "rs.dcm")
    return folder


@pytest.mark.slow
def test_lung1_missing_slice(shared_data, tmp_path):
    folder = _linked_copy(tmp_path, shared_data, drop=60)
    settings = ConvertSettings.from_config({"tumour": "GTV-1"})
    with pytest.raises(DicomError, match="missing slice.*-465.50->-459.50 mm"):
        convert_patient(inputs_from_folder(folder, settings), tmp_path / "out", settings)


@pytest.mark.slow
def test_lung1_duplicated_slice(shared_data, tmp_path):
    folder = _linked_copy(tmp_path, shared_data, duplicate=60)
    settings = ConvertSettings.from_config({"tumour": "GTV-1"})
    summary = convert_patient(inputs_from_folder(folder, settings), tmp_path / "out", settings)
    assert summary["ct"]["size_xyz"] == [512, 512, 134]
    assert any("duplicate slice dropped" in w for w in summary["warnings"])


@pytest.mark.parametrize("case", ["slicerrt-eclipse-prostate-phantom",
                                  "pancreas-ct-cb-001-rtstruct-only"])
def test_rtstruct_without_ct_fails_clearly(shared_data, case):
    with pytest.raises(DicomError, match="no RTSTRUCT is linked.*absent from the archive"):
        inputs_from_folder(shared_data / case, ConvertSettings())


def test_dicompyler_single_slice_refused(shared_data, tmp_path):
    settings = ConvertSettings.from_config({"tumour": "Breast"})
    with pytest.raises(DicomError, match="patient 123456.*single-slice CT series"):
        convert_patient(inputs_from_folder(shared_data / "dicompyler-breast-example", settings),
                        tmp_path, settings)
    rows = index_dicom(shared_data / "dicompyler-breast-example", progress=False)
    assert {r["modality"] for r in rows} >= {"CT", "RTSTRUCT", "RTPLAN"}
    assert any("RTPLAN object: listed, not used" in p for r in rows for p in r["problems"])


def _rtutils(tmp_path: Path, shared_data: Path, rtstruct: str) -> Path:
    mock = shared_data / "rtutils-quirks" / "tests" / "mock_data"
    folder = tmp_path / rtstruct
    folder.mkdir()
    for name in ("ct_1.dcm", "ct_2.dcm", f"{rtstruct}.dcm"):
        os.symlink(mock / name, folder / name)
    return folder


@pytest.mark.parametrize("rtstruct,link", [("invalid_reference_rt", "series_uid"),
                                           ("non_existent_reference_rt",
                                            "frame_of_reference+geometry")])
def test_rtutils_contours_on_absent_slices(shared_data, tmp_path, rtstruct, link):
    folder = _rtutils(tmp_path, shared_data, rtstruct)
    rows = index_dicom(folder, progress=False)
    assert next(r for r in rows if r["modality"] == "RTSTRUCT")["link_method"] == link
    settings = ConvertSettings.from_config({"tumour": "ROI-1", "node": "ROI-[234]"})
    summary = convert_patient(inputs_from_folder(folder, settings), tmp_path / "out", settings)
    assert summary["tumour"]["voxels"] > 0
    assert summary["roi_reports"]["ROI-1"]["off_volume"] == 1
    assert any("slices the CT series does not have" in w for w in summary["warnings"])


def test_rtutils_frame_of_reference_mismatch(shared_data, tmp_path):
    folder = _rtutils(tmp_path, shared_data, "rt")
    settings = ConvertSettings.from_config({"tumour": "ROI-1"})
    with pytest.raises(DicomError, match="PHANTOM_EXAMPLE.*rt.dcm.*Frame of Reference mismatch"):
        inputs_from_folder(folder, settings)


def test_rtutils_oblique_and_single_slice(shared_data):
    data = shared_data / "rtutils-quirks" / "tests"
    files = sorted(glob.glob(str(data / "oriented_data" / "*.dcm")))
    ours = load_ct_series(files).to_sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(data / "oriented_data")))
    itk = reader.Execute()
    assert np.allclose(ours.GetDirection(), itk.GetDirection(), atol=1e-4)
    assert np.allclose(ours.GetOrigin(), itk.GetOrigin(), atol=1e-3)
    assert np.allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(itk), atol=1e-3)
    with pytest.raises(DicomError, match="single slice position"):
        load_ct_series(glob.glob(str(data / "one_slice_data" / "*.dcm")))
