"""The synthetic demo cohort: valid DICOM, contours that match the phantom, determinism,
and a label model whose oracle AUC lies in the documented range."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from mmfusion.synth import SynthSettings, generate_cohort, patient_phantom
from mmfusion.synth.cohort import CLINICAL_COLUMNS, HEMATOLOGY_COLUMNS, draw_cohort
from tests.conftest import TINY, require_tool


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _ct_files(cohort: Path, pid: str) -> list[Path]:
    return sorted((cohort / "dicom" / pid / "CT").glob("*.dcm"))


def _rtstruct(cohort: Path, pid: str) -> Path:
    (path,) = (cohort / "dicom" / pid / "RTSTRUCT").glob("*.dcm")
    return path


def test_layout_and_tables(tiny_cohort: Path) -> None:
    manifest = json.loads((tiny_cohort / "manifest.json").read_text())
    ids = [p["patient_id"] for p in manifest["patients"]]
    assert ids == ["ESO-0001", "ESO-0002", "ESO-0003"]
    clinical = pd.read_csv(tiny_cohort / "clinical.csv")
    hema = pd.read_csv(tiny_cohort / "hematology.csv")
    truth = pd.read_csv(tiny_cohort / "truth.csv")
    assert list(clinical.columns) == CLINICAL_COLUMNS
    assert list(hema.columns) == HEMATOLOGY_COLUMNS
    assert set(clinical["lnm"]) <= {0, 1}
    assert (truth["patient_id"] == clinical["patient_id"]).all()
    assert (truth["lnm"] == clinical["lnm"]).all()
    assert np.allclose(truth["probability"], 1 / (1 + np.exp(-truth["logit"])), atol=1e-5)
    assert clinical["t_stage"].isin(["T1", "T2", "T3", "T4"]).all()
    assert hema["wbc"].between(1, 30).all()
    for pid in ids:
        assert len(_ct_files(tiny_cohort, pid)) == TINY.n_slices


def test_ct_headers_are_realistic(tiny_cohort: Path) -> None:
    rep = set()
    for pid in ("ESO-0001", "ESO-0002", "ESO-0003"):
        slices = [pydicom.dcmread(f) for f in _ct_files(tiny_cohort, pid)]
        first = slices[0]
        assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert first.PatientName and first.PatientBirthDate  # filled on purpose
        assert len({s.SeriesInstanceUID for s in slices}) == 1
        assert len({s.SOPInstanceUID for s in slices}) == len(slices)
        z = sorted(float(s.ImagePositionPatient[2]) for s in slices)
        assert np.allclose(np.diff(z), TINY.slice_thickness)
        rep.add(int(first.PixelRepresentation))
        # as scanners store them: int16 with intercept 0, or uint16 (12 bits) with -1024
        expected = {0: (-1024.0, 12), 1: (0.0, 16)}[int(first.PixelRepresentation)]
        assert (float(first.RescaleIntercept), int(first.BitsStored)) == expected
        for s in slices:
            hu = s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept)
            assert -1024 <= hu.min() and hu.max() < 3072


def test_rtstruct_references_its_series(tiny_cohort: Path) -> None:
    for pid in ("ESO-0001", "ESO-0002", "ESO-0003"):
        ct = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
              for f in _ct_files(tiny_cohort, pid)}
        series = pydicom.dcmread(_ct_files(tiny_cohort, pid)[0]).SeriesInstanceUID
        rs = pydicom.dcmread(_rtstruct(tiny_cohort, pid))
        ref_series = (rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                      .RTReferencedSeriesSequence[0])
        assert ref_series.SeriesInstanceUID == series
        assert {i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence} == ct
        names = [r.ROIName for r in rs.StructureSetROISequence]
        assert {"Body", "Lung-L", "Lung-R", "Esophagus"} <= set(names)
        for roi in rs.ROIContourSequence:
            for c in getattr(roi, "ContourSequence", []):
                assert c.ContourGeometricType == "CLOSED_PLANAR"
                assert c.ContourImageSequence[0].ReferencedSOPInstanceUID in ct


@pytest.mark.external
def test_dciodvfy_reports_no_errors(tiny_cohort: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    for path in (_ct_files(tiny_cohort, "ESO-0001")[0], _rtstruct(tiny_cohort, "ESO-0001")):
        res = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        report = res.stdout + res.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n{report}"


@pytest.mark.external
def test_plastimatch_masks_match_phantom_labels(tiny_cohort: Path, tmp_path: Path) -> None:
    """An independent converter rasterises our RTSTRUCT onto our CT grid like the phantom."""
    plastimatch = require_tool("plastimatch")
    for index, pid in enumerate(("ESO-0001", "ESO-0002", "ESO-0003")):
        out = tmp_path / pid
        subprocess.run(
            [plastimatch, "convert", "--input", str(_rtstruct(tiny_cohort, pid).parent),
             "--referenced-ct", str(_ct_files(tiny_cohort, pid)[0].parent),
             "--output-prefix", str(out), "--prefix-format", "nii.gz"],
            check=True, capture_output=True)
        phantom, _ = patient_phantom(TINY, index)
        for roi in phantom.rois:
            image = sitk.ReadImage(str(out / f"{roi.name}.nii.gz"))
            assert image.GetSpacing() == pytest.approx(
                (TINY.pixel_spacing, TINY.pixel_spacing, TINY.slice_thickness))
            theirs = sitk.GetArrayFromImage(image).astype(bool)
            ours = phantom.labels[roi.name]
            dice = 2 * (theirs & ours).sum() / max(theirs.sum() + ours.sum(), 1)
            assert ours.sum() > 0, f"{pid} {roi.name} is empty"
            assert dice >= 0.97, f"{pid} {roi.name}: Dice {dice:.4f}"


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    settings = SynthSettings(n_patients=2, seed=11, matrix=64, n_slices=30,
                             pixel_spacing=5.2, slice_thickness=5.0)
    a = _files(Path(generate_cohort(tmp_path / "a", settings, progress=False)).parent)
    b = _files(Path(generate_cohort(tmp_path / "b", settings, jobs=2, progress=False)).parent)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    other = SynthSettings(n_patients=2, seed=12, matrix=64, n_slices=30,
                          pixel_spacing=5.2, slice_thickness=5.0)
    c = Path(generate_cohort(tmp_path / "c", other, progress=False)).parent
    digest = hashlib.sha1((c / "hematology.csv").read_bytes()).hexdigest()
    assert digest != hashlib.sha1(a["hematology.csv"].read_bytes()).hexdigest()


def test_oracle_auc_of_300_patients_is_in_documented_range() -> None:
    draw = draw_cohort(SynthSettings(n_patients=300))
    auc = roc_auc_score(draw.labels, draw.logit)
    assert 0.85 <= auc <= 0.92, auc
    # every modality carries part of the signal, none alone reaches the oracle
    for part in draw.parts.values():
        assert 0.6 < roc_auc_score(draw.labels, part) < auc
    assert 0.3 < draw.labels.mean() < 0.5


def test_image_findings_follow_the_label_model(tiny_cohort: Path) -> None:
    """Node ROIs in the RTSTRUCT are exactly the nodes the label model drew."""
    truth = pd.read_csv(tiny_cohort / "truth.csv")
    for pid, n_nodes in zip(truth["patient_id"], truth["n_nodes"], strict=True):
        rs = pydicom.dcmread(_rtstruct(tiny_cohort, pid))
        names = [r.ROIName for r in rs.StructureSetROISequence]
        assert len(names) == 5 + n_nodes, names


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="field of view"):
        SynthSettings(matrix=64, pixel_spacing=2.0)
    with pytest.raises(ValueError, match="prevalence"):
        SynthSettings(prevalence=1.5)
