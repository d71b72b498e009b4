"""The manifest route on real public data (../shared/data): the same patient through the DICOM
route and through NIfTI / NRRD / DICOM-SEG gives the same patches and radiomics.

- The CT exported by an independent tool (plastimatch) to NIfTI and to NRRD, with the DICOM
  route's masks: patches and radiomics equal to the DICOM route's (to float rounding: the
  exported header stores the geometry in single precision).
- plastimatch's own masks (its own rasteriser): the tumour agrees to Dice >= 0.99 and the
  radiomics within 1.5 % (allowed because two polygon rasterisers may differ on boundary
  voxels; measured on these two cases: every feature equal).
- A DICOM-SEG written by highdicom from the DICOM route's masks, with the CT as a DICOM
  folder: masks equal voxel for voxel.
- IBSI's own NIfTI export of the phantom (image + mask): radiomics within 1.5 % (measured:
  equal).
"""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_folder
from mmfusion.features.crop import run_crop
from mmfusion.features.patches import CropSettings
from mmfusion.features.radiomics import RadiomicsSettings, run_radiomics
from mmfusion.images.convert import convert_manifest_row
from mmfusion.images.manifest import index_manifest, read_manifest_index, write_manifest_index
from tests.conftest import require_tool
from tests.image_fixtures import write_manifest

LUNG1 = "nsclc-radiomics-lung1-001/LUNG1-001"
IBSI = "ibsi1-ct-phantom"
CASES = {IBSI: ("dicom/image", "dicom/mask"), LUNG1: ("image", "mask_rtstruct")}
SETTINGS = ConvertSettings.from_config({"tumour": "GTV-1", "node": "GTV-N.*"}, {})
# a small crop (the default's 42x128x128 tumour patch at 1 mm is mostly air on the phantom)
CROP = CropSettings.from_config({"spacing": [2.0, 2.0, 3.0], "tumour_size": [16, 48, 48],
                                 "node_sizes": [[8, 24, 24]] * 3})
RADIOMICS = RadiomicsSettings.from_config({})
RADIOMICS_RTOL = 0.015

pytestmark = pytest.mark.slow


def _stages(folder: Path) -> tuple[dict[str, np.ndarray], pd.Series]:
    """Crop and radiomics of a converted folder: (patch arrays, numeric radiomics)."""
    run_crop(folder, CROP)
    run_radiomics(folder, RADIOMICS)
    with np.load(folder / "patches.npz") as npz:
        patches = {k: npz[k] for k in npz.files}
    table = pd.read_csv(folder / "radiomics.tsv", sep="\t")
    return patches, table.select_dtypes("number").iloc[0]


def _dicom_route(shared: Path, case: str, out: Path) -> Path:
    convert_patient(inputs_from_folder(shared / case, SETTINGS), out, SETTINGS)
    return out


def _manifest_route(rows: list[dict], tmp: Path, out: Path) -> tuple[Path, dict]:
    manifest = write_manifest(tmp / "manifest.csv", rows)
    write_manifest_index(index_manifest(manifest), tmp / "manifest_index.tsv")
    (row,) = read_manifest_index(tmp / "manifest_index.tsv")
    assert row["problems"] == [], row["problems"]
    return out, convert_manifest_row(row, out, SETTINGS)


def _plastimatch(shared: Path, case: str, tmp: Path, fmt: str) -> tuple[Path, dict[str, Path]]:
    """plastimatch's CT and ROI masks of the case in format `fmt` (nii.gz or nrrd)."""
    tool = require_tool("plastimatch")
    image_dir, mask_dir = CASES[case]
    flat = tmp / "flat"
    if not flat.exists():
        flat.mkdir(parents=True)
        files = sorted(glob.glob(str(shared / case / image_dir / "*.dcm")))
        files += glob.glob(str(shared / case / mask_dir / "*.dcm"))
        for i, f in enumerate(files):
            os.symlink(f, flat / f"{i:04d}_{Path(f).name}")
    out = tmp / f"plastimatch_{fmt.replace('.', '_')}"
    subprocess.run([tool, "convert", "--input", str(flat), "--output-img",
                    str(out / f"ct.{fmt}"), "--output-prefix", str(out / "masks"),
                    "--prefix-format", fmt, "--xor-contours"], check=True, capture_output=True)
    return out / f"ct.{fmt}", {p.name.split(".")[0]: p for p in (out / "masks").iterdir()}


def _compare_patches(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        if a[key].dtype.kind in "fiub":
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def reference(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The DICOM route's outputs, patches and radiomics of each case."""
    out = {}
    for case in CASES:
        folder = _dicom_route(shared_data, case, tmp_path_factory.mktemp("dicom_route"))
        out[case] = (folder, *_stages(folder))
    return out


@pytest.mark.external
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd"])
def test_plastimatch_ct_with_our_masks_gives_the_same_patches_and_radiomics(
        shared_data, reference, tmp_path, case, fmt):
    folder, patches, radiomics = reference[case]
    ct, _ = _plastimatch(shared_data, case, tmp_path, fmt)
    masks = {}
    for name in ("gtv_t", "gtv_n"):  # the DICOM route's masks, in the same format
        masks[name] = tmp_path / f"{name}.{fmt}"
        sitk.WriteImage(sitk.ReadImage(str(folder / f"{name}.nii.gz")), str(masks[name]), True)
    out, summary = _manifest_route([{"patient_id": "P", "image": str(ct),
                                     "tumour": str(masks["gtv_t"]),
                                     "nodes": str(masks["gtv_n"])}], tmp_path, tmp_path / "m")
    assert {p["method"] for p in summary["placements"].values()} == {"same_lattice"}
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ct.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz"))),
                                  ours)  # plastimatch's HU equal ours, voxel for voxel
    got_patches, got_radiomics = _stages(out)
    _compare_patches(got_patches, patches, atol=1e-4)
    pd.testing.assert_series_equal(got_radiomics, radiomics, rtol=1e-5, check_names=False)


@pytest.mark.external
@pytest.mark.parametrize("case", list(CASES))
def test_plastimatch_masks_give_radiomics_within_tolerance(shared_data, reference, tmp_path,
                                                            case):
    folder, _, radiomics = reference[case]
    ct, masks = _plastimatch(shared_data, case, tmp_path, "nii.gz")
    out, _ = _manifest_route([{"patient_id": "P", "image": str(ct),
                               "tumour": str(masks["GTV-1"])}], tmp_path, tmp_path / "m")
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "gtv_t.nii.gz"))).astype(bool)
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "gtv_t.nii.gz"))).astype(bool)
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99
    _, got = _stages(out)
    # measured: every feature equal (both rasterisers agree on these contours)
    pd.testing.assert_series_equal(got, radiomics, rtol=RADIOMICS_RTOL, check_names=False)


def test_dicom_seg_of_real_masks_gives_the_same_masks(shared_data, reference, tmp_path):
    from tests.dicom_fixtures import write_seg

    folder, _, _ = reference[LUNG1]
    ct_files = sorted((shared_data / LUNG1 / "image").glob("*.dcm"))
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "gtv_t.nii.gz"))).astype(bool)
    seg = write_seg(tmp_path / "lung1_seg.dcm", ct_files, {"GTV-1": tumour})
    out, summary = _manifest_route([{"patient_id": "LUNG1-001",
                                     "image": str(shared_data / LUNG1 / "image"),
                                     "tumour": str(seg)}], tmp_path, tmp_path / "m")
    assert summary["masks"]["kinds"] == {"lung1_seg.dcm": "dicom_seg"}
    for name in ("ct.nii.gz", "gtv_t.nii.gz"):
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))),
            sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name))), err_msg=name)


def test_ibsi_nifti_export_gives_radiomics_within_tolerance(shared_data, reference, tmp_path):
    _, _, radiomics = reference[IBSI]
    nifti = shared_data / IBSI / "nifti"
    out, _ = _manifest_route([{"patient_id": "phantom",
                               "image": str(nifti / "image" / "phantom.nii.gz"),
                               "tumour": str(nifti / "mask" / "mask.nii.gz")}],
                             tmp_path, tmp_path / "m")
    _, got = _stages(out)
    pd.testing.assert_series_equal(got, radiomics, rtol=RADIOMICS_RTOL, check_names=False)
