"""`bench/gpu_check.py` (`make gpu-check`): the CPU smoke run of the graph modes writes a
sane JSON; without a GPU it says so in one line and exits with `NO_GPU_EXIT`."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
HAVE_DGL = importlib.util.find_spec("dgl") is not None


@pytest.fixture(scope="module")
def gpu_check():
    """bench/gpu_check.py as a module (it puts bench/ on sys.path for its helpers)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check_modes", None)


def test_cpu_smoke_run_of_the_graph_modes(gpu_check, tmp_path, capsys) -> None:
    """mmfusion with the torch layers and with the DGL hybrid (graph layer pinned to the
    CPU: the crossing runs), 1 epoch, tiny shapes: both train, JSON says where the graph
    ran, how fast, and the graph section's share."""
    modes = ["torch", *(["dgl-hybrid"] if HAVE_DGL else [])]
    out = tmp_path / "check.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--epochs", "1", "--patients", "10",
                         "--modes", ",".join(modes), "--mode-amp", "off,bf16",
                         "--variants", "", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["patients"] == 10 and report["epochs"] == 1
    runs = [r for r in report["runs"] if "skipped" not in r]
    assert [r["mode"] for r in runs] == modes
    for r in runs:
        assert r["variant"] == "mmfusion" and r["amp"] == "off"
        assert r["samples_s"] > 0 and r["step_ms"] > 0 and math.isfinite(r["loss"])
        assert r["graph_device"] == "cpu" and r["peak_gib"] is None  # no GPU memory
        assert r["graph_params_updated"] and r["other_params_updated"] and r["params_finite"]
        assert r["graph_calls"] >= 1 and 0 < r["graph_share"] < 1
        assert 0 <= r["copy_share"] <= r["graph_share"]
        assert report["amp_trains"][r["mode"]] == {"off": True,
                                                   "bf16": "amp bf16 is ignored on the cpu"}
    assert runs[0]["graph"] == "torch"
    if HAVE_DGL:
        assert runs[1]["graph"] == "dgl" and "pinned" in runs[1]["graph_device_reason"]
    assert "samples/s" in printed and "copy %" in printed and f"written: {out}" in printed


def test_no_gpu_is_one_line_and_its_own_exit_code(gpu_check, tmp_path, capsys,
                                                  monkeypatch) -> None:
    """`--device cuda` (the default) on a machine without a GPU: one line, exit
    `NO_GPU_EXIT` (which `make gpu-check` accepts), nothing written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--json", str(out)]) == gpu_check.modes.NO_GPU_EXIT == 3
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU: ")
    assert not out.exists()
