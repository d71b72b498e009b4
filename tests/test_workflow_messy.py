"""The workflow on a messy real-style cohort: a broken series, a patient missing from the
clinical table, stray files. It must finish, and every dropped patient must be recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml

from mmfusion.synth import SynthSettings, generate_cohort
from tests.conftest import REPO
from tests.test_workflow import _snakemake

MESSY = SynthSettings(n_patients=12, seed=5, prevalence=0.5, matrix=64, n_slices=32,
                      pixel_spacing=5.2, slice_thickness=5.0)


@pytest.mark.slow
def test_messy_cohort_finishes_and_records_every_exclusion(tmp_path: Path) -> None:
    cohort = tmp_path / "archive"
    generate_cohort(cohort, MESSY, progress=False)
    dicom = cohort / "dicom"
    # 1. ESO-0002 lost a slice in the middle of its CT series -> refused at conversion
    slices = sorted((dicom / "ESO-0002" / "CT").glob("*.dcm"),
                    key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                        .ImagePositionPatient[2]))
    slices[len(slices) // 2].unlink()
    # 2. ESO-0005's RTSTRUCT is gone: CT without contours
    shutil.rmtree(dicom / "ESO-0005" / "RTSTRUCT")
    # 3. ESO-0007 is missing from the clinical table
    clinical = pd.read_csv(cohort / "clinical.csv")
    clinical[clinical["patient_id"] != "ESO-0007"].to_csv(cohort / "clinical.csv", index=False)
    # 4. stray files a real export carries
    (dicom / "README.txt").write_text("exported by PACS\n")
    (dicom / "ESO-0003" / "CT" / "DICOMDIR.bak").write_bytes(b"\x00" * 300)

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    results = tmp_path / "results"
    config["results"] = str(results)
    config["cohort"] = {"synthetic": False, "dicom_root": str(dicom),
                        "clinical": str(cohort / "clinical.csv"),
                        "hematology": str(cohort / "hematology.csv"),
                        "id_column": "patient_id", "label_column": "lnm", "positive_value": 1}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = _snakemake(["--cores", "2", "--configfile", str(cfg), "--nolock",
                      "--until", "make_folds"])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]

    summary = pd.read_csv(results / "qc" / "convert_summary.tsv", sep="\t")
    status = dict(zip(summary["patient_id"], summary["status"], strict=True))
    assert status["ESO-0002"] == "excluded"
    assert "ESO-0005" not in status  # no RTSTRUCT: never reaches conversion
    assert sum(s == "ok" for s in status.values()) == 10

    exclusions = pd.read_csv(results / "qc" / "exclusions.tsv", sep="\t")
    excluded = set(exclusions["patient_id"])
    assert {"ESO-0002", "ESO-0005", "ESO-0007"} <= excluded
    reason = exclusions.set_index("patient_id")["reason"]
    assert "slice" in reason["ESO-0002"].lower()
    table = pd.read_csv(results / "cohort" / "table.tsv", sep="\t")
    assert set(table["patient_id"]) == {f"ESO-{i:04d}" for i in range(1, 13)} - {
        "ESO-0002", "ESO-0005", "ESO-0007"}
    folds = pd.read_csv(results / "cohort" / "folds.tsv", sep="\t")
    assert set(folds["patient_id"]) == set(table["patient_id"])
