"""End-to-end: cohorts that are not (only) DICOM-RT, through `snakemake --configfile`.

A synthetic cohort of 12 patients; six leave the DICOM archive and come through the
manifest instead, each in another form (NIfTI label maps, NRRD + a cropped Slicer
segmentation, MetaImage with a 0/255 tumour and one file per node, one label map holding
tumour and nodes, a DICOM CT folder with NIfTI masks); four stay DICOM-RT and two have their
RTSTRUCT replaced by a DICOM-SEG (written by highdicom). That mixed cohort runs to the
report. Then the same 12 patients given only as NIfTI (no DICOM at
all) run to the report, every patient's patches and radiomics equal the mixed run's (the
routes agree), and `mmfusion predict --manifest` reproduces the workflow's fold scores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_folder
from mmfusion.synth import SynthSettings, generate_cohort
from tests.image_fixtures import write_manifest, write_slicer_seg
from tests.test_workflow import _snakemake

SYNTH = SynthSettings(n_patients=12, seed=5, prevalence=0.5, matrix=64, n_slices=32,
                      pixel_spacing=5.2, slice_thickness=5.0)
MANIFEST_PATIENTS = [f"ESO-{i:04d}" for i in range(1, 7)]
DICOM_PATIENTS = [f"ESO-{i:04d}" for i in range(7, 13)]
SEG_PATIENTS = DICOM_PATIENTS[-2:]  # in the archive with a DICOM-SEG instead of an RTSTRUCT

CONFIG = """\
results: {results}
cohort:
  dicom_root: {dicom_root}
  manifest: {manifest}
  clinical: {clinical}
  hematology: {hematology}
folds:
  n_folds: 3
crop:
  spacing: [4.0, 4.0, 5.0]
  tumour_size: [8, 16, 16]
  node_sizes: [[4, 12, 12], [4, 12, 12], [4, 12, 12]]
preprocess:
  n_tumour: 4
  n_node: 3
model:
  variants: {variants}
  depth: 10
  base_width: 4
  shared_backbone: true
  mmrl_dim: 8
  hga_dim: 8
  hga_out: 8
  head_hidden: 8
  diffusion_hidden: 8
  n_samples: 4
train:
  epochs: 2
  warmup_epochs: 1
  restart_epoch: 2
  batch_size: 4
  mc_replicates: 2
"""


def _sitk():
    import SimpleITK as sitk

    return sitk


def _as_nifti(export: Path, patient: str, out: Path) -> dict[str, Path]:
    """The patient's CT and masks as the DICOM route writes them (ct, gtv_t, gtv_n)."""
    settings = ConvertSettings.from_config({}, {})
    convert_patient(inputs_from_folder(export / "dicom" / patient, settings), out, settings)
    return {name: out / f"{name}.nii.gz" for name in ("ct", "gtv_t", "gtv_n")}


def _rewrite(src: Path, dst: Path, transform=None) -> Path:
    sitk = _sitk()
    image = sitk.ReadImage(str(src))
    if transform is not None:
        out = sitk.GetImageFromArray(transform(sitk.GetArrayFromImage(image)))
        out.CopyInformation(image)
        image = out
    sitk.WriteImage(image, str(dst), True)
    return dst


def _manifest_forms(export: Path, root: Path) -> list[dict[str, object]]:
    """Rows for MANIFEST_PATIENTS, each patient in another accepted form."""
    sitk = _sitk()
    rows = []
    for i, patient in enumerate(MANIFEST_PATIENTS):
        src = _as_nifti(export, patient, root / "converted" / patient)
        folder = root / "images" / f"case_{i}"
        folder.mkdir(parents=True)
        if i in (0, 1):  # NIfTI label maps
            for name in ("ct", "gtv_t", "gtv_n"):
                shutil.copy(src[name], folder / f"{name}.nii.gz")
            rows.append({"image": "ct.nii.gz", "tumour": "gtv_t.nii.gz",
                         "nodes": "gtv_n.nii.gz"})
        elif i == 2:  # NRRD CT + a cropped Slicer segmentation with named segments
            _rewrite(src["ct"], folder / "ct.nrrd")
            tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(src["gtv_t"]))) > 0
            nodes = sitk.GetArrayFromImage(sitk.ReadImage(str(src["gtv_n"])))
            regions = {"GTV-T": tumour, **{f"GTV-N{k}": nodes == k
                                            for k in range(1, int(nodes.max()) + 1)}}
            write_slicer_seg(folder / "contours.seg.nrrd", regions,
                             reference=sitk.ReadImage(str(src["ct"])))
            rows.append({"image": "ct.nrrd", "tumour": "contours.seg.nrrd",
                         "nodes": "contours.seg.nrrd"})
        elif i == 3:  # MetaImage, the tumour stored 0/255, one file per node
            _rewrite(src["ct"], folder / "ct.mha")
            _rewrite(src["gtv_t"], folder / "tumour.mha", lambda a: a * 255)
            nodes = sitk.GetArrayFromImage(sitk.ReadImage(str(src["gtv_n"])))
            names = []
            for k in range(1, int(nodes.max()) + 1):
                _rewrite(src["gtv_n"], folder / f"node_{k}.nrrd",
                         lambda a, k=k: (a == k).astype(np.uint8))
                names.append(f"node_{k}.nrrd")
            rows.append({"image": "ct.mha", "tumour": "tumour.mha", "nodes": ";".join(names)})
        elif i == 4:  # one label map: tumour 1, nodes 2..k+1
            shutil.copy(src["ct"], folder / "ct.nii.gz")
            tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(src["gtv_t"])))
            _rewrite(src["gtv_n"], folder / "labels.nii.gz",
                     lambda a, t=tumour: np.where(t > 0, 1, np.where(a > 0, a + 1, 0))
                     .astype(np.uint8))
            rows.append({"image": "ct.nii.gz", "tumour": "labels.nii.gz",
                         "nodes": "labels.nii.gz", "tumour_label": 1})
        else:  # the DICOM CT series folder, masks as NIfTI
            shutil.copytree(export / "dicom" / patient / "CT", folder / "CT")
            shutil.copy(src["gtv_t"], folder / "tumour.nii.gz")
            shutil.copy(src["gtv_n"], folder / "nodes.nii.gz")
            rows.append({"image": "CT", "tumour": "tumour.nii.gz", "nodes": "nodes.nii.gz"})
        rows[-1] = {"patient_id": patient, **{
            k: v if k == "tumour_label" else ";".join(f"images/case_{i}/{part}"
                                                      for part in str(v).split(";"))
            for k, v in rows[-1].items()}}
    return rows


def _replace_rtstruct_by_seg(export: Path, patient: str, folder: Path, converted: Path) -> None:
    """The patient's contours as a DICOM-SEG (tumour and one segment per node) in place of
    its RTSTRUCT."""
    from tests.dicom_fixtures import write_seg

    sitk = _sitk()
    src = _as_nifti(export, patient, converted / patient)
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(src["gtv_t"]))) > 0
    nodes = sitk.GetArrayFromImage(sitk.ReadImage(str(src["gtv_n"])))
    masks = {"GTV-T": tumour, **{f"GTV-N{k}": nodes == k for k in range(1, int(nodes.max()) + 1)}}
    shutil.rmtree(folder / "RTSTRUCT")
    (folder / "SEG").mkdir()
    write_seg(folder / "SEG" / "seg.dcm", sorted((folder / "CT").glob("*.dcm")), masks)


def _run(root: Path, name: str, **paths: object) -> Path:
    text = CONFIG.format(results=root / name, **{k: json.dumps(str(v)) if k != "variants"
                                                 else v for k, v in paths.items()})
    cfg = root / f"{name}.yaml"
    cfg.write_text(text)
    res = _snakemake(["--cores", "2", "--configfile", str(cfg), "--nolock"])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("manifest_cohort")
    export = root / "synth"
    generate_cohort(export, SYNTH, jobs=1, progress=False)
    archive = root / "archive"
    for patient in DICOM_PATIENTS:
        shutil.copytree(export / "dicom" / patient, archive / patient)
    for patient in SEG_PATIENTS:
        _replace_rtstruct_by_seg(export, patient, archive / patient, root / "converted")
    rows = _manifest_forms(export, root)
    mixed = write_manifest(root / "manifest.csv", rows)
    # every patient as NIfTI only (the DICOM route's files are the independent copy here)
    only = []
    for patient in MANIFEST_PATIENTS + DICOM_PATIENTS:
        src = root / "converted" / patient
        if not src.exists():
            _as_nifti(export, patient, src)
        only.append({"patient_id": patient, "image": f"converted/{patient}/ct.nii.gz",
                     "tumour": f"converted/{patient}/gtv_t.nii.gz",
                     "nodes": f"converted/{patient}/gtv_n.nii.gz"})
    nifti_only = write_manifest(root / "nifti_only.tsv", only)
    tables = {"clinical": export / "clinical.csv", "hematology": export / "hematology.csv"}
    return {
        "root": root,
        "mixed": _run(root, "mixed", dicom_root=archive, manifest=mixed,
                      variants="[logreg, mmfusion]", **tables),
        "nifti": _run(root, "nifti", dicom_root="", manifest=nifti_only,
                      variants="[logreg]", **tables),
        "nifti_manifest": nifti_only, **tables,
    }


@pytest.mark.slow
def test_a_mixed_cohort_runs_to_the_report(runs: dict[str, Path]) -> None:
    results = runs["mixed"]
    table = pd.read_csv(results / "cohort" / "table.tsv", sep="\t")
    assert sorted(table["patient_id"]) == sorted(MANIFEST_PATIENTS + DICOM_PATIENTS)
    for patient in MANIFEST_PATIENTS + DICOM_PATIENTS:
        rois = json.loads((results / "patients" / patient / "rois.json").read_text())
        assert (rois.get("source") == "manifest") == (patient in MANIFEST_PATIENTS), patient
        if patient in DICOM_PATIENTS:
            assert rois["mask_source"] == ("seg" if patient in SEG_PATIENTS else "rtstruct")
        status = json.loads((results / "patients" / patient / "convert_status.json").read_text())
        assert status["status"] == "ok", status
    summary = pd.read_csv(results / "report" / "metrics_summary.csv")
    assert sorted(set(summary["variant"])) == ["logreg", "mmfusion"]
    assert (results / "report" / "summary.md").is_file()


@pytest.mark.slow
def test_every_route_gives_the_same_patches_and_radiomics(runs: dict[str, Path]) -> None:
    """The mixed run (DICOM-RT for four, DICOM-SEG for two, six manifest forms for the others)
    and the NIfTI-only run agree for every patient: the routes give the same patches and
    radiomics."""
    for patient in MANIFEST_PATIENTS + DICOM_PATIENTS:
        a = np.load(runs["mixed"] / "patients" / patient / "patches.npz")
        b = np.load(runs["nifti"] / "patients" / patient / "patches.npz")
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{patient} {key}")
        ra = pd.read_csv(runs["mixed"] / "patients" / patient / "radiomics.tsv", sep="\t")
        rb = pd.read_csv(runs["nifti"] / "patients" / patient / "radiomics.tsv", sep="\t")
        pd.testing.assert_frame_equal(ra.select_dtypes("number"), rb.select_dtypes("number"))


@pytest.mark.slow
def test_a_nifti_only_cohort_runs_and_predict_takes_a_manifest(runs: dict[str, Path],
                                                                tmp_path: Path) -> None:
    from mmfusion.cli import main as cli

    results = runs["nifti"]
    assert (results / "report" / "summary.md").is_file()
    assert pd.read_csv(results / "dicom_index.tsv", sep="\t").empty  # no DICOM at all
    out = tmp_path / "predict"
    assert cli(["predict", "--bundle", str(results / "bundle" / "logreg"), "--manifest",
                str(runs["nifti_manifest"]), "--clinical", str(runs["clinical"]),
                "--hematology", str(runs["hematology"]), "--out", str(out),
                "--workers", "1", "--no-progress"]) == 0
    folds = pd.read_csv(out / "fold_probabilities.csv")
    compared = 0
    for k in range(3):
        trained = pd.read_csv(results / "models" / "logreg" / f"fold{k}" / "predictions.csv")
        both = folds[folds["fold"] == k].merge(trained, on="patient_id")
        assert len(both) == len(trained)
        np.testing.assert_allclose(both["probability_x"], both["probability_y"], atol=1e-6)
        compared += len(both)
    assert compared == SYNTH.n_patients
