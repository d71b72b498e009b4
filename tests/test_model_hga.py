"""HGA: the GAT layer (DGL's and the torch backend's) equals a dense computation of eq. 1;
batched == per-patient."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from mmfusion.model.hga import HGA, complete_graph

HAVE_DGL = importlib.util.find_spec("dgl") is not None
BACKENDS = ["torch", *(["dgl"] if HAVE_DGL else [])]
needs_dgl = pytest.mark.skipif(not HAVE_DGL, reason="DGL is not installed (torch route)")

WIDTHS = {"tumour_image": 6, "node_image": 6, "clinical": 5, "hematology": 4,
          "radiomics_tumour": 7, "radiomics_node": 3}


def make(heads: int = 1, backend: str = "dgl") -> HGA:
    torch.manual_seed(0)
    return HGA(WIDTHS, dim=8, out_dim=8, heads=heads, backend=backend).eval()


def batch(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, w, generator=gen) for k, w in WIDTHS.items()}


def dense_eq1(hga: HGA, vertices: torch.Tensor) -> torch.Tensor:
    """Eq. 1 with dense tensors: F'_i = σ(Σ_j α_ij W F_j + b),
    α_ij = softmax_j LeakyReLU(a^T [W F_i ‖ W F_j])."""
    gat = hga.gat
    b, v, _ = vertices.shape
    h = gat._num_heads
    wf = (vertices @ gat.fc.weight.T).view(b, v, h, -1)  # (B, V, heads, d)
    el = (wf * gat.attn_l).sum(-1)  # source term (B, V, heads)
    er = (wf * gat.attn_r).sum(-1)  # destination term
    e = F.leaky_relu(er[:, :, None, :] + el[:, None, :, :], 0.2)  # (B, i, j, heads)
    alpha = torch.softmax(e, dim=2)  # over every j: complete graph with self-loops
    agg = torch.einsum("bijh,bjhd->bihd", alpha, wf) + gat.bias.view(1, 1, h, -1)
    return F.elu(agg).reshape(b, -1)


@needs_dgl
def test_complete_graph_with_self_loops():
    g = complete_graph(4)
    assert g.num_edges() == 16
    src, dst = g.edges()
    pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
    assert pairs == {(i, j) for i in range(4) for j in range(4)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_gat_equals_dense_eq1(backend):
    for heads in (1, 2):
        hga = make(heads, backend)
        with torch.no_grad():  # non-trivial attention parameters
            hga.gat.attn_l.normal_()
            hga.gat.attn_r.normal_()
            hga.gat.bias.normal_()
        x = batch(5)
        vertices = hga.encode(x)
        assert torch.allclose(hga(x), dense_eq1(hga, vertices), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_per_patient(backend):
    hga = make(2, backend)
    x = batch(6, seed=1)
    together = hga(x)
    single = torch.cat([hga({k: t[i : i + 1] for k, t in x.items()}) for i in range(6)])
    assert together.shape == (6, 6 * 8)
    assert torch.allclose(together, single, atol=1e-6)


@needs_dgl
def test_batched_graph_is_cached_and_backward_runs():
    hga = make().train()
    g1 = hga.batched_graph(4, torch.device("cpu"))
    assert hga.batched_graph(4, torch.device("cpu")) is g1
    assert g1.num_nodes() == 4 * 6 and g1.num_edges() == 4 * 36
    hga(batch(4)).sum().backward()
    assert hga.encoders["clinical"][0].weight.grad is not None
