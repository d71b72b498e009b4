"""The hybrid device (issue 20): HGA's graph layer on the CPU, the rest of the model
elsewhere (`mmfusion.model.hga`, `mmfusion.model.graph_backend.graph_device_for`).

A CPU-only machine has no second device to compute on, so the split is checked two ways:
placement with moves to torch's `meta` device (no numerics) and to float64; numerics with
the graph layer pinned to the CPU in float64 while the rest of the model runs in float32 on
the CPU, so the features really cross (a conversion both ways, through autograd) and the
results can be compared with the plain float32 model."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from mmfusion.model import graph_backend as gb
from mmfusion.model import hga as hga_module
from mmfusion.model.hga import HGA, GraphTimer
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.train.device import MixedGradScaler, graph_placement
from mmfusion.train.scoring import score_split
from tests.test_train_loop import TINY, split

pytestmark = pytest.mark.usefixtures("one_thread")
HAVE_DGL = importlib.util.find_spec("dgl") is not None
BACKENDS = ["torch", *(["dgl"] if HAVE_DGL else [])]
needs_dgl = pytest.mark.skipif(not HAVE_DGL, reason="DGL is not installed (torch route)")
WIDTHS = {"clinical": 4, "hematology": 3, "radiomics_tumour": 5, "radiomics_node": 2}
CPU = torch.device("cpu")


def _model(variant: str, backend: str, seed: int = 0) -> MMFusionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(variant=variant, probability="difference", graph_backend=backend, **TINY)
    return MMFusionModel(cfg, WIDTHS)


def _graph_names(model: MMFusionModel) -> set[str]:
    prefix = "hga.gat." if model.cfg.graph_conv == "gat" else "hga.gcn."
    return {k for k, _ in model.named_parameters() if k.startswith(prefix)}


@pytest.mark.parametrize("variant", ["mmfusion", "mmfusion_gcn"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pinned_graph_layer_stays_while_the_rest_moves(variant: str, backend: str) -> None:
    """`.to('meta')` moves every parameter but the graph layer's; `.to(float64)` converts
    all but a graph layer pinned in float32; the state-dict keys are those of a plain model."""
    plain = _model(variant, backend)
    model = _model(variant, backend)
    model.hga.pin_graph_layer("cpu")
    graph = _graph_names(model)
    assert graph and model.state_dict().keys() == plain.state_dict().keys()
    model.to(torch.float64)  # dtype follows unless pinned too
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    model.hga.pin_graph_layer("cpu", torch.float32)
    model.to("meta")
    for name, p in model.named_parameters():
        if name in graph:
            assert (p.device, p.dtype) == (CPU, torch.float32), name
        else:
            assert (p.device.type, p.dtype) == ("meta", torch.float64), name
    assert model.hga.graph_device == CPU
    assert model.state_dict().keys() == plain.state_dict().keys()


@needs_dgl
def test_dgl_stays_on_the_cpu_where_it_cannot_run(caplog, monkeypatch) -> None:
    """Unpinned: a DGL graph layer keeps to the CPU when the model moves where DGL cannot
    run (one log line saying why); the torch layers move with the model."""
    monkeypatch.setattr(hga_module, "_said", set())
    dgl_model, torch_model = _model("mmfusion", "dgl"), _model("mmfusion", "torch")
    with caplog.at_level(logging.INFO, logger="mmfusion.model.hga"):
        dgl_model.to("meta")
        dgl_model.to("meta")
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "hybrid: DGL runs on the CPU and CUDA only, not on meta" in caplog.text
    for name, p in dgl_model.named_parameters():
        assert p.device.type == ("cpu" if name in _graph_names(dgl_model) else "meta"), name
    torch_model.to("meta")
    assert {p.device.type for p in torch_model.parameters()} == {"meta"}


def test_graph_device_for(monkeypatch) -> None:
    """PyPI's CPU-only DGL on a GPU: hybrid (graph on the CPU); a CUDA DGL: the GPU."""
    monkeypatch.setattr(gb, "dgl_cuda_status", lambda: (False, "a CPU-only build"))
    home, why = gb.graph_device_for("dgl", "cuda:0")
    assert home == CPU and why.startswith("hybrid: a CPU-only build, so DGL's graph layer "
                                          "stays on the CPU")
    assert gb.graph_device_for("torch", "cuda:0")[0] == torch.device("cuda:0")
    assert gb.graph_device_for("dgl", "cpu") == (CPU, "DGL runs on cpu")
    monkeypatch.setattr(gb, "dgl_cuda_status", lambda: (True, ""))
    assert gb.graph_device_for("dgl", "cuda:1")[0] == torch.device("cuda:1")


def _hybrid_pair(variant: str, backend: str) -> tuple[MMFusionModel, MMFusionModel]:
    """(reference: a plain float32 model; hybrid: the same weights, graph layer pinned to
    the CPU in float64, the rest in float32)."""
    ref = _model(variant, backend)
    hyb = _model(variant, backend)
    hyb.load_state_dict(ref.state_dict())
    hyb.hga.pin_graph_layer("cpu", torch.float64)
    return ref, hyb


@pytest.mark.parametrize("variant", ["mmfusion", "mmfusion_gcn", "base3"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hybrid_outputs_and_gradients(variant: str, backend: str) -> None:
    """Features, logits and loss equal the single-device model's (float32 tolerance), and
    the gradients reach every parameter on both sides of the crossing."""
    ref, hyb = _hybrid_pair(variant, backend)
    batch = split(6, seed=2).batch(np.arange(6), CPU)
    results = []
    for model in (ref, hyb):
        model.train()
        torch.manual_seed(4)  # the same dropout and relation masks in both
        out = model(batch)
        loss = model.loss(batch, out)["total"]
        model.zero_grad()
        loss.backward()
        results.append((out, loss, dict(model.named_parameters())))
    (o1, l1, p1), (o2, l2, p2) = results
    assert o2.features.dtype == torch.float32  # back in the features' dtype
    torch.testing.assert_close(o2.features, o1.features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o2.logit, o1.logit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    graph = _graph_names(hyb)
    assert any(p.grad is not None for p in p1.values())
    for name, p in p2.items():  # where the plain model has a gradient (node3 is absent)
        if name.startswith("hga.") or p1[name].grad is not None:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert p.grad is None, name
            continue
        assert p.grad.dtype == (torch.float64 if name in graph else torch.float32), name
        if name.startswith("hga."):  # both sides of the crossing
            torch.testing.assert_close(p.grad.float(), p1[name].grad, rtol=1e-4, atol=1e-6,
                                       msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hybrid_checkpoint_scores_identically_on_a_plain_cpu_model(tmp_path,
                                                                      backend: str) -> None:
    """Weights saved from a hybrid model (after a training step) load into a plain CPU model
    (same keys) and score the same patients identically; a plain checkpoint loads back into
    a hybrid model."""
    hyb = _model("mmfusion", backend, seed=1)
    hyb.hga.pin_graph_layer("cpu")
    opt = torch.optim.Adam(hyb.parameters(), lr=1e-2)
    batch = split(6, seed=2).batch(np.arange(6), CPU)
    hyb.train()
    hyb.loss(batch, hyb(batch))["total"].backward()
    opt.step()
    torch.save(hyb.state_dict(), tmp_path / "model.pt")
    plain = _model("mmfusion", backend, seed=2)
    plain.load_state_dict(torch.load(tmp_path / "model.pt", map_location="cpu"))
    data = split(10, seed=3)
    a = score_split(hyb, data, 4, CPU, seed=5)
    b = score_split(plain, data, 4, CPU, seed=5)
    np.testing.assert_array_equal(a.probability, b.probability)
    back = _model("mmfusion", backend, seed=3)
    back.hga.pin_graph_layer("cpu")
    back.load_state_dict(plain.state_dict())
    np.testing.assert_array_equal(score_split(back, data, 4, CPU, seed=5).probability,
                                  a.probability)


def test_graph_placement_record() -> None:
    """metrics.json's graph_device: where the graph layer's parameters are, and why."""
    model = _model("mmfusion", "torch")
    assert graph_placement(model, CPU) == {"graph_device": "cpu", "graph_device_reason":
                                           "the torch graph layers run on cpu"}
    model.hga.pin_graph_layer("cpu")
    model.to("meta")
    record = graph_placement(model, torch.device("meta"))
    assert record["graph_device"] == "cpu" and "pinned" in record["graph_device_reason"]
    base = _model("base2", "torch")
    assert graph_placement(base, CPU)["graph_device"] is None


def test_timer_is_off_by_default_and_times_the_crossing() -> None:
    hga = HGA({"a": 3, "b": 2}, dim=4, out_dim=4, backend="torch")
    assert hga.timer is None
    hga.pin_graph_layer("cpu", torch.float32)
    hga.double()
    hga.timer = GraphTimer()
    x = {"a": torch.randn(5, 3, dtype=torch.float64), "b": torch.randn(5, 2, dtype=torch.float64)}
    hga(x).sum().backward()
    assert hga.timer.calls == 1
    assert all(s > 0 for s in hga.timer.seconds.values()), hga.timer.seconds


def test_fp16_scaler_unscales_cpu_gradients() -> None:
    """fp16 in the hybrid mode: torch 2.2's unscale kernel is CUDA-only, so the scaler
    unscales the graph layer's CPU gradients itself and flags their overflow."""
    scaler = MixedGradScaler(enabled=False)  # enabled needs CUDA; the unscale is the same
    finite, other = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([finite, other], lr=0.1)
    finite.grad, other.grad = torch.full((3,), 8.0), torch.tensor([4.0, 2.0])
    found = scaler._unscale_grads_(opt, torch.tensor(0.25), torch.zeros(()), False)
    assert float(found[CPU]) == 0.0
    assert torch.equal(finite.grad, torch.full((3,), 2.0))
    assert torch.equal(other.grad, torch.tensor([1.0, 0.5]))
    other.grad = torch.tensor([float("inf"), 1.0])
    assert float(scaler._unscale_grads_(opt, torch.tensor(0.5), torch.zeros(()),
                                        False)[CPU]) == 1.0
