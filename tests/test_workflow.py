"""End-to-end: the real Snakemake workflow on a tiny synthetic cohort."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO

TINY_SYNTH = {"n_patients": 12, "seed": 3, "prevalence": 0.5, "matrix": 64, "n_slices": 32,
              "pixel_spacing": 5.2, "slice_thickness": 5.0}
N_PATIENTS = TINY_SYNTH["n_patients"]


def _snakemake(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(Path(bindir) / "snakemake"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the whole default workflow once on a tiny cohort; returns the results folder."""
    tmp = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp / "results")
    config["synth"] = TINY_SYNTH
    config["train"].update(epochs=3, warmup_epochs=1, restart_epoch=3)
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = _snakemake(["--cores", "2", "--configfile", str(cfg), "--nolock"])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    return tmp / "results"


@pytest.mark.slow
def test_workflow_builds_the_demo_cohort(workflow_run: Path) -> None:
    cohort = workflow_run / "demo_cohort"
    assert (cohort / "manifest.json").is_file()
    patients = sorted(p.name for p in (cohort / "dicom").iterdir())
    assert patients == [f"ESO-{i:04d}" for i in range(1, N_PATIENTS + 1)]
    assert (workflow_run / "logs" / "synth_cohort.log").is_file()
    assert (workflow_run / "benchmarks" / "synth_cohort.tsv").is_file()


@pytest.mark.slow
def test_workflow_runs_every_stage_for_every_patient(workflow_run: Path) -> None:
    ids = [f"ESO-{i:04d}" for i in range(1, N_PATIENTS + 1)]
    index = pd.read_csv(workflow_run / "dicom_index.tsv", sep="\t")
    assert set(index.loc[index["modality"] == "RTSTRUCT", "patient"]) == set(ids)
    summary = pd.read_csv(workflow_run / "qc" / "convert_summary.tsv", sep="\t")
    assert list(summary["status"]) == ["ok"] * N_PATIENTS
    for pid in ids:
        folder = workflow_run / "patients" / pid
        for name in ("ct.nii.gz", "gtv_t.nii.gz", "gtv_n.nii.gz", "rois.json",
                     "patches.npz", "qc.png", "radiomics.tsv"):
            assert (folder / name).is_file(), f"{pid}/{name}"
    table = pd.read_csv(workflow_run / "cohort" / "table.tsv", sep="\t")
    assert sorted(table["patient_id"]) == ids
    folds = pd.read_csv(workflow_run / "cohort" / "folds.tsv", sep="\t")
    tests = folds[folds["split"] == "test"]
    assert sorted(tests["patient_id"]) == ids  # every patient is tested exactly once
    for variant in ("base1", "base2", "base3", "mmfusion", "logreg", "gbm"):
        scored = []
        for fold in range(3):
            pred = pd.read_csv(workflow_run / "models" / variant / f"fold{fold}" /
                               "predictions.csv")
            assert list(pred.columns[:6]) == ["patient_id", "fold", "variant", "probability",
                                              "uncertainty", "label"]
            assert pred["probability"].between(0, 1).all()
            scored += list(pred["patient_id"])
        assert sorted(scored) == ids, variant


@pytest.mark.slow
def test_workflow_reports_every_variant_and_fold(workflow_run: Path, tmp_path: Path) -> None:
    report = workflow_run / "report"
    summary = pd.read_csv(report / "metrics_summary.csv")
    assert len(summary) == 6 * 3
    assert set(summary["variant"]) == {"base1", "base2", "base3", "mmfusion", "logreg", "gbm"}
    assert summary["auc"].between(0, 1).all()
    # the Monte Carlo error of the diffusion scores, measured per fold (appended columns)
    assert list(summary.columns[-4:]) == ["mc_n_samples", "mc_sd_mean", "mc_sd_p95",
                                          "mc_sd_max"]
    diffusion = summary["variant"] == "mmfusion"
    assert (summary.loc[diffusion, "mc_sd_max"] >= summary.loc[diffusion, "mc_sd_mean"]).all()
    # measured for every mmfusion fold; 0 is possible (a fold whose float32 probabilities
    # saturate at 0 or 1 at this tiny size, or a recalibration map flat where its scores
    # lie), but the noise must move some fold's raw probabilities
    assert (summary.loc[diffusion, "mc_sd_mean"] >= 0).all()
    raw = [json.loads((workflow_run / "models" / "mmfusion" / f"fold{k}" / "metrics.json")
                      .read_text())["monte_carlo"]["test_raw"]["sd_mean"] for k in range(3)]
    assert min(raw) >= 0 and max(raw) > 0, raw
    assert summary.loc[~diffusion, "mc_sd_mean"].isna().all()
    assert "## Monte Carlo error of diffusion scores" in (report / "summary.md").read_text()
    assert len(pd.read_csv(report / "oracle_auc.csv")) == 3  # demo: oracle on the same folds
    for fig in ("roc", "calibration", "auc_by_fold"):
        assert (report / "figures" / f"{fig}.png").stat().st_size > 1000
    # paper Fig. 3 (the demo's one diffusion variant): one row per fold x step, valid PNGs
    fig3 = pd.read_csv(report / "fig3_davies_bouldin.csv")
    assert len(fig3) == 3 * 6 and not fig3.duplicated(["variant", "fold", "step"]).any()
    assert set(fig3["variant"]) == {"mmfusion"}
    assert fig3.groupby("fold")["n_patients"].first().sum() == N_PATIENTS  # each test once
    for name in ("mmfusion_fold0", "mmfusion_fold1", "mmfusion_fold2", "mmfusion_davies_bouldin"):
        png = (report / "fig3" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, name


@pytest.mark.slow
def test_outputs_never_carry_patient_names_or_birth_dates(workflow_run: Path) -> None:
    """The synthetic headers hold fake names and birth dates; no output may copy them."""
    import pydicom

    names, births = set(), set()
    for ct in (workflow_run / "demo_cohort" / "dicom").glob("*/CT/*.dcm"):
        ds = pydicom.dcmread(ct, stop_before_pixels=True)
        names.add(str(ds.PatientName))
        births.add(str(ds.PatientBirthDate))
    assert names and births
    pattern = re.compile("|".join([re.escape(n) for n in names] + ["SYNTH\\^"] +
                                  [rf"(?<!\d){b}(?!\d)" for b in births]))
    checked = 0
    for path in workflow_run.rglob("*"):
        if not path.is_file() or "demo_cohort" in path.parts:
            continue
        if path.suffix in {".tsv", ".csv", ".json", ".log", ".txt"}:
            hit = pattern.search(path.read_text(errors="ignore"))
            assert hit is None, f"{path}: {hit.group(0) if hit else ''}"
            checked += 1
    assert checked > 50


def test_config_schema_rejects_unknown_and_bad_keys(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp_path / "r")
    config["synth"]["n_patients"] = 0
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = _snakemake(["-n", "--configfile", str(cfg)])
    assert res.returncode != 0
    assert "n_patients" in res.stdout + res.stderr

    config["synth"]["n_patients"] = 5
    config["cohort"] = {"synthetic": False}  # a real cohort needs its paths
    cfg.write_text(yaml.safe_dump(config))
    res = _snakemake(["-n", "--configfile", str(cfg)])
    assert res.returncode != 0
    assert "clinical" in res.stdout + res.stderr
    config["cohort"] = {"synthetic": False, "clinical": "c.csv"}  # ... and its images
    cfg.write_text(yaml.safe_dump(config))
    res = _snakemake(["-n", "--configfile", str(cfg)])
    assert res.returncode != 0
    assert "dicom_root" in res.stdout + res.stderr and "manifest" in res.stdout + res.stderr


def test_snakemake_lint_is_clean() -> None:
    res = _snakemake(["--lint"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Lints for" not in out, out
