"""Device resolution (`mmfusion.train.device`): torch CUDA yes/no x DGL CUDA yes/no x
`model.graph_backend` (DGL's build matters only for `dgl`)."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from mmfusion.cli import main
from mmfusion.errors import ConfigError
from mmfusion.train import device as dev
from mmfusion.train import gpu_lock

DGL_WHY = "the installed DGL 2.1.0 is a CPU-only build"  # what the faked probe says


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test logs its lines anew and holds no GPU lease."""
    monkeypatch.setattr(dev, "_said", set())
    gpu_lock.release_gpu()
    yield
    gpu_lock.release_gpu()


def fake(monkeypatch, torch_cuda: bool, dgl_cuda: bool, hardware: bool = False) -> None:
    """torch sees a GPU or not; DGL is a CUDA build or the PyPI CPU build."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_cuda)
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    monkeypatch.setattr(dev, "dgl_cuda_status",
                        lambda: (True, "") if dgl_cuda else (False, DGL_WHY))
    monkeypatch.setattr(dev, "_gpu_hardware_present", lambda: hardware or torch_cuda)


CASES = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("name", ["auto", "cuda"])
@pytest.mark.parametrize("torch_cuda,dgl_cuda", CASES)
def test_dgl_graphs_never_keep_the_model_off_the_gpu(monkeypatch, caplog, torch_cuda, dgl_cuda,
                                                      name):
    """`graph_backend: dgl`: the GPU whenever torch sees one; a DGL without CUDA means the
    hybrid mode (graph layer on the CPU), said once with the fix."""
    fake(monkeypatch, torch_cuda, dgl_cuda)
    if not torch_cuda and name == "cuda":
        with pytest.raises(ConfigError, match="sees no GPU"):
            dev.resolve_device(name, "dgl")
        return
    with caplog.at_level(logging.INFO, logger="mmfusion.train.device"):
        first = dev.resolve_device(name, "dgl")
        assert dev.resolve_device(name, "dgl") == first  # resolved again: no second line
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert first == torch.device("cuda" if torch_cuda else "cpu")
    if torch_cuda and dgl_cuda:
        assert lines == []
        return
    assert len(lines) == 1
    level, text = lines[0]
    assert level == logging.INFO
    if torch_cuda:  # a GPU torch can use, a DGL that cannot: hybrid, with the fix
        assert f"graph layer on the CPU (hybrid) because {DGL_WHY}" in text
        assert "envs/train.yaml" in text and "graph_backend" in text  # the fix: conda or auto
        assert "envs/train.yaml" in text and "model.graph_backend: auto" in text
    else:  # no GPU at all: say so, quietly
        assert "sees no GPU" in text


@pytest.mark.parametrize("graph_backend", ["auto", "torch"])
@pytest.mark.parametrize("torch_cuda,dgl_cuda", CASES)
def test_auto_uses_the_gpu_whatever_dgls_build(monkeypatch, caplog, torch_cuda, dgl_cuda,
                                               graph_backend):
    """With `auto` or `torch` graphs the GPU is used whenever torch sees one (the graph layer
    then runs in torch where DGL cannot: tests/test_graph_backend_choice.py)."""
    fake(monkeypatch, torch_cuda, dgl_cuda)
    with caplog.at_level(logging.INFO, logger="mmfusion.train.device"):
        device = dev.resolve_device("auto", graph_backend)
    assert device == torch.device("cuda" if torch_cuda else "cpu")
    assert len(caplog.records) == (0 if torch_cuda else 1)
    assert dev.resolve_device("auto") == device  # auto is the default graph backend


def test_auto_warns_when_a_gpu_is_there_but_torch_is_cpu_only(monkeypatch, caplog):
    fake(monkeypatch, False, False, hardware=True)
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.INFO, logger="mmfusion.train.device"):
        assert dev.resolve_device("auto") == torch.device("cpu")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "is a CPU-only build" in record.message
    assert "pip install torch==2.10.0" in record.message


@pytest.mark.parametrize("torch_cuda,dgl_cuda", CASES)
def test_explicit_cuda(monkeypatch, torch_cuda, dgl_cuda):
    fake(monkeypatch, torch_cuda, dgl_cuda)
    if torch_cuda:  # never refused because of DGL's build
        for backend in ("auto", "torch", "dgl"):
            assert dev.resolve_device("cuda", backend) == torch.device("cuda")
        return
    for backend in ("auto", "torch", "dgl"):
        with pytest.raises(ConfigError, match="train.device is cuda but ") as err:
            dev.resolve_device("cuda", backend)
        text = str(err.value)
        assert "\n" not in text and "sees no GPU" in text
        assert "pip install torch==2.10.0" in text and "set train.device: auto" in text


def test_cpu_and_bad_names(monkeypatch):
    fake(monkeypatch, True, True)
    assert dev.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device must be one of"):
        dev.resolve_device("gpu")


def test_real_dgl_probe_on_this_machine():
    ok, why = dev.dgl_cuda_status()
    if torch.cuda.is_available() and ok:
        pytest.skip("a CUDA DGL on a GPU machine")
    assert not ok and why


def test_dgl_probe_reads_the_cuda_device_api(monkeypatch):
    dgl = pytest.importorskip("dgl", reason="the probe of a DGL build needs a DGL")
    import dgl._ffi.function as ffi
    from dgl._ffi.runtime_ctypes import DGLContext

    real = ffi.get_global_func
    monkeypatch.setattr(ffi, "get_global_func", lambda name, allow_missing=False: (
        object() if name == "device_api.cuda" else real(name, allow_missing)))
    for exists, expected in ((True, (True, "")), (False, (False, "sees no GPU"))):
        monkeypatch.setattr(DGLContext, "exist", property(lambda self, e=exists: e))
        dev.dgl_cuda_status.cache_clear()
        ok, why = dev.dgl_cuda_status()
        assert ok == expected[0] and expected[1] in why
    dev.dgl_cuda_status.cache_clear()
    monkeypatch.undo()
    # the PyPI build here
    assert dev.dgl_cuda_status() == (False, f"the installed DGL {dgl.__version__} is a "
                                            "CPU-only build")
    dev.dgl_cuda_status.cache_clear()


def test_describe_device_on_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    text = dev.describe_device(torch.device("cpu"))
    assert text.startswith("device cpu; ")
    assert f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})" in text
    ok, version = dev.dgl_status()
    assert (f"dgl {version} (CUDA: no)" if ok else "dgl not importable (") in text
    assert text.endswith("CUDA_VISIBLE_DEVICES='2,5'")


def test_describe_device_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    text = dev.describe_device(torch.device("cuda", 1))
    assert text.startswith("device cuda:1 (Fake GPU 1); ")
    assert text.endswith("CUDA_VISIBLE_DEVICES=unset")


def test_select_device_takes_a_gpu_lock(monkeypatch, tmp_path):
    fake(monkeypatch, True, True)
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fd = gpu_lock._try_lock(tmp_path / "gpu-0.lock")  # another job holds cuda:0
    assert dev.select_device("cuda", count=2, lock_dir=tmp_path) == torch.device("cuda", 1)
    assert chosen == [1]
    assert dev.select_device("cpu") == torch.device("cpu")
    os.close(fd)


def test_train_fold_with_cuda_fails_before_reading_data(monkeypatch, capsys):
    fake(monkeypatch, False, False)
    code = main(["train", "fold", "--table", "/nonexistent/table.tsv", "--spec", "/no",
                 "--folds", "/no", "--cache", "/no", "--fold", "0", "--variant", "base1",
                 "--train-settings", json.dumps({"device": "cuda"}), "--out", "/no/out"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "train.device is cuda but torch" in err and "Potential fix: install torch" in err
