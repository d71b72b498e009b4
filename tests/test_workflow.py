"""End-to-end: the real Snakemake workflow on a tiny synthetic cohort."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

TINY_SYNTH = {"n_patients": 6, "seed": 3, "prevalence": 0.5, "matrix": 64, "n_slices": 32,
              "pixel_spacing": 5.2, "slice_thickness": 5.0}


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
    assert patients == [f"ESO-{i:04d}" for i in range(1, 7)]
    assert (workflow_run / "logs" / "synth_cohort.log").is_file()
    assert (workflow_run / "benchmarks" / "synth_cohort.tsv").is_file()


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
    assert "dicom_root" in res.stdout + res.stderr


def test_snakemake_lint_is_clean() -> None:
    res = _snakemake(["--lint"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Lints for" not in out, out
