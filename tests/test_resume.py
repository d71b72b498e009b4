"""Kill and resume: a workflow SIGKILLed during conversion and again during training,
resumed as the README says, ends with the outputs of an uninterrupted run; killed writers
leave no temporary files behind once their outputs are written again."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmfusion.io import atomic_path, remove_stale_temporaries
from tests.test_workflow import REPO, TINY_SYNTH, _snakemake

TIMING = {"epoch_seconds", "data_wait_share", "mean_epoch_seconds", "mean_data_wait_share"}
VARIANTS = ["base3", "mmfusion", "logreg"]


def _hold_temporary(final: Path) -> subprocess.Popen:
    """A process that opens an atomic write of `final` and waits (to be killed)."""
    code = ("import sys, time; from mmfusion.io import atomic_path\n"
            f"with atomic_path({str(final)!r}) as tmp:\n"
            "    tmp.write_text('half'); print(tmp, flush=True); time.sleep(60)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)


def test_a_killed_writers_temporary_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    final = tmp_path / "out.tsv"
    killed, alive = _hold_temporary(final), _hold_temporary(final)
    killed_tmp = Path(killed.stdout.readline().strip())
    alive_tmp = Path(alive.stdout.readline().strip())
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed_tmp.exists()
    try:
        with atomic_path(final) as tmp:
            tmp.write_text("done")
        assert final.read_text() == "done"
        assert not killed_tmp.exists()
        assert alive_tmp.exists()  # a running writer's temporary is left alone
    finally:
        alive.kill()
        alive.wait()
    assert remove_stale_temporaries(final) == [alive_tmp]


def _config(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp / "results")
    config["synth"] = TINY_SYNTH
    config["model"]["variants"] = VARIANTS
    config["train"].update(epochs=4, warmup_epochs=1, restart_epoch=4, select_from=0)
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def _run_until(cfg: Path, ready, log: Path, timeout: float = 300) -> bool:
    """Start the workflow (as a user resumes it: `--rerun-incomplete`) in its own process
    group; SIGKILL the group once `ready()`. Returns whether it was killed (False: it
    finished first)."""
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(bindir) / "snakemake"), "--cores", "2",
                                 "--configfile", str(cfg), "--rerun-incomplete"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.05)
        proc.wait(timeout=30)
        return False


def _unlock(cfg: Path) -> None:
    unlock = _snakemake(["--unlock", "--configfile", str(cfg)])
    assert unlock.returncode == 0, unlock.stderr[-2000:]


def _resume(cfg: Path) -> None:
    """What the README tells a user after a kill: unlock, then run again."""
    _unlock(cfg)
    res = _snakemake(["--cores", "2", "--configfile", str(cfg), "--rerun-incomplete"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]


def _outputs(results: Path) -> dict[str, object]:
    """Predictions (bytes) and metrics / training logs without their wall-clock fields."""
    out: dict[str, object] = {}
    for path in sorted(results.glob("models/*/fold*/*")):
        rel = str(path.relative_to(results))
        if path.name == "predictions.csv":
            out[rel] = path.read_bytes()
        elif path.name == "metrics.json":
            out[rel] = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}
        elif path.name == "train_log.csv":
            out[rel] = [{k: v for k, v in row.items() if k not in TIMING}
                        for row in csv.DictReader(path.read_text().splitlines())]
    out["summary"] = (results / "report/metrics_summary.csv").read_bytes()
    return out


@pytest.mark.slow
def test_kill_during_conversion_and_training_then_resume_gives_identical_outputs(
        tmp_path: Path) -> None:
    straight = _config(tmp_path / "straight")
    res = _snakemake(["--cores", "2", "--configfile", str(straight)])
    assert res.returncode == 0, res.stderr[-5000:]

    cfg = _config(tmp_path / "killed")
    results = tmp_path / "killed/results"
    converting = lambda: len(list(results.glob("patients/*/convert_status.json"))) >= 2  # noqa: E731
    assert _run_until(cfg, converting, tmp_path / "run1.log"), "finished before the kill"
    assert not (results / "qc/convert_summary.tsv").exists()  # killed mid-conversion
    training = lambda: any(results.glob("models/mmfusion/fold*/last.pt"))  # noqa: E731
    _unlock(cfg)
    assert _run_until(cfg, training, tmp_path / "run2.log"), "finished before the kill"
    assert not (results / "report/metrics_summary.csv").exists()  # killed mid-training
    _resume(cfg)

    assert _outputs(results) == _outputs(tmp_path / "straight/results")
    leftovers = [p for p in results.rglob(".*") if ".tmp" in p.name]
    assert leftovers == []
