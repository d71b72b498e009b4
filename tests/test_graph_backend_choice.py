"""`model.graph_backend` (mmfusion/model/graph_backend.py): which library runs HGA's graph
layer, the whole model on either backend, checkpoints across backends, and a Python where
DGL does not import at all."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmfusion.errors import ConfigError
from mmfusion.model import graph_backend as gb
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from tests.conftest import REPO
from tests.test_train_loop import TINY, split

pytestmark = pytest.mark.usefixtures("one_thread")
WIDTHS = {"clinical": 4, "hematology": 3, "radiomics_tumour": 5, "radiomics_node": 2}
needs_dgl = pytest.mark.skipif(importlib.util.find_spec("dgl") is None,
                               reason="DGL is not installed (torch route)")


@pytest.fixture(autouse=True)
def fresh_log(monkeypatch):
    monkeypatch.setattr(gb, "_said", set())


def _no_dgl(monkeypatch) -> None:
    monkeypatch.setattr(gb, "dgl_status", lambda: (False, "ModuleNotFoundError: dgl"))


def test_explicit_choices(monkeypatch) -> None:
    assert gb.resolve_graph_backend("torch", "cuda")[0] == "torch"
    monkeypatch.setattr(gb, "dgl_status", lambda: (True, "2.1.0"))
    assert gb.resolve_graph_backend("dgl", "cpu") == ("dgl", "model.graph_backend: dgl "
                                                             "(DGL 2.1.0)")
    _no_dgl(monkeypatch)
    assert gb.resolve_graph_backend("torch")[0] == "torch"
    with pytest.raises(ConfigError, match="graph_backend is dgl but DGL does not import") \
            as err:
        gb.resolve_graph_backend("dgl")
    assert "model.graph_backend: torch" in str(err.value)
    with pytest.raises(ConfigError, match="model.graph_backend must be one of"):
        gb.resolve_graph_backend("pyg")


def test_auto_prefers_dgl_where_it_runs(monkeypatch, caplog) -> None:
    monkeypatch.setattr(gb, "dgl_status", lambda: (True, "2.1.0"))
    with caplog.at_level(logging.INFO, logger="mmfusion.model.graph_backend"):
        backend, why = gb.resolve_graph_backend("auto", "cpu")
    assert backend == "dgl" and "imports and runs on cpu" in why
    assert "graph backend: DGL" in caplog.text
    # a GPU with PyPI's CPU-only DGL: the graph runs in torch on the GPU, one warning
    monkeypatch.setattr(gb, "dgl_cuda_status", lambda: (False, "a CPU-only build"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmfusion.model.graph_backend"):
        backend, why = gb.resolve_graph_backend("auto", "cuda")
        assert gb.resolve_graph_backend("auto", "cuda")[0] == "torch"  # logged once
    assert backend == "torch" and "cannot run on cuda: a CPU-only build" in why
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    monkeypatch.setattr(gb, "dgl_cuda_status", lambda: (True, ""))
    assert gb.resolve_graph_backend("auto", "cuda")[0] == "dgl"
    _no_dgl(monkeypatch)
    assert gb.resolve_graph_backend("auto", "cpu") == (
        "torch", "auto: DGL does not import (ModuleNotFoundError: dgl)")


def _model(variant: str, backend: str) -> MMFusionModel:
    cfg = ModelConfig(variant=variant, probability="difference", graph_backend=backend, **TINY)
    return MMFusionModel(cfg, WIDTHS)


@needs_dgl
@pytest.mark.parametrize("variant", ["mmfusion", "mmfusion_gcn", "base3"])
def test_the_whole_model_is_the_same_on_both_backends(variant: str) -> None:
    """A DGL model's state dict loads into a torch-backend model (same keys) and gives the
    same features, logits, losses, gradients and diffusion scores."""
    torch.manual_seed(0)
    ref = _model(variant, "dgl")
    mine = _model(variant, "torch")
    assert ref.graph_backend == "dgl" and mine.graph_backend == "torch"
    assert ref.state_dict().keys() == mine.state_dict().keys()
    mine.load_state_dict(ref.state_dict())
    batch = split(10, seed=2).batch(np.arange(10), torch.device("cpu"))
    outs = []
    for model in (ref, mine):
        model.train()
        torch.manual_seed(4)  # the same dropout and relation masks in both
        out = model(batch)
        loss = model.loss(batch, out)["total"]
        model.zero_grad()
        loss.backward()
        outs.append((out, loss, {k: p.grad.clone() for k, p in model.named_parameters()
                                 if p.grad is not None}))
    (o1, l1, g1), (o2, l2, g2) = outs
    torch.testing.assert_close(o2.features, o1.features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o2.logit, o1.logit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys() and any(k.startswith("hga.") for k in g1)
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=1e-4, atol=1e-6, msg=key)
    from mmfusion.train.scoring import score_split

    data = split(14, seed=3)
    a = score_split(ref, data, 4, torch.device("cpu"), seed=1)
    b = score_split(mine, data, 4, torch.device("cpu"), seed=1)
    np.testing.assert_allclose(b.probability, a.probability, rtol=0, atol=1e-6)


def test_without_dgl_at_all(tmp_path) -> None:
    """In a Python where `import dgl` fails, the package imports, `auto` chooses torch with
    one warning, and a model trains a step and scores."""
    code = """
import sys
sys.modules["dgl"] = None  # `import dgl` raises ImportError, as where DGL is not installed
import logging, numpy as np, torch
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.train.scoring import score_split
from tests.test_train_loop import TINY, split
cfg = ModelConfig(variant="mmfusion", **TINY)
model = MMFusionModel(cfg, {"clinical": 4, "hematology": 3, "radiomics_tumour": 5,
                            "radiomics_node": 2})
assert model.graph_backend == "torch", model.graph_backend
data = split(6, seed=1)
batch = data.batch(np.arange(6), torch.device("cpu"))
model.loss(batch, model(batch))["total"].backward()
assert model.hga.gat.attn_l.grad is not None
print("scores", score_split(model, data, 4, torch.device("cpu"), seed=0).probability.shape)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "scores (6,)" in res.stdout
    warnings = [line for line in res.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "graph backend: torch, because DGL does not import" \
        in warnings[0]
