"""The torch graph backend (mmfusion/model/graph_torch.py) computes exactly DGL's GATConv and
GraphConv on HGA's graphs: outputs and gradients against DGL on random batched graphs, with
every option HGA could set; state dicts interchange."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmfusion.model.graph_torch import DenseGATConv, DenseGraphConv

dgl = pytest.importorskip("dgl", reason="DGL is the reference the torch backend is tested "
                                        "against; this venv has none")
from dgl.nn import GATConv, GraphConv  # noqa: E402

B, V = 5, 6  # patients, modality vertices (HGA's six)


def batched_graph(b: int, v: int, self_loops: bool):
    """HGA's batched graph, built as mmfusion.model.hga does."""
    from mmfusion.model.hga import complete_graph

    return dgl.batch([complete_graph(v, self_loops)] * b)


def _compare(ref: torch.nn.Module, mine: torch.nn.Module, graph, feat: torch.Tensor,
             self_loops: bool, seed: int, train: bool, shape: tuple[int, ...]) -> None:
    """Same state, same input, same random state: same output and same gradients (input
    and every parameter), in float64 so that only a difference in the maths shows (float32
    summation order alone differs by ~1e-6)."""
    ref, mine, feat = ref.double(), mine.double(), feat.double()
    mine.load_state_dict(ref.state_dict())
    ref.train(train)
    mine.train(train)
    x_ref = feat.clone().requires_grad_(True)
    x_mine = feat.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out_ref = ref(graph, x_ref.reshape(B * V, -1))
    torch.manual_seed(seed)
    out_mine = mine(x_mine, self_loops=self_loops)
    assert out_mine.shape == (B, V, *shape)
    torch.testing.assert_close(out_mine.reshape(out_ref.shape), out_ref, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(out_ref)  # a loss that weighs every output differently
    (out_ref * weights).sum().backward()
    (out_mine.reshape(out_ref.shape) * weights).sum().backward()
    torch.testing.assert_close(x_mine.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    grads_ref = {k: p.grad for k, p in ref.named_parameters()}
    grads_mine = {k: p.grad for k, p in mine.named_parameters()}
    assert grads_ref.keys() == grads_mine.keys()
    for key, grad in grads_ref.items():
        assert grad is not None and grads_mine[key] is not None, key
        torch.testing.assert_close(grads_mine[key], grad, rtol=1e-10, atol=1e-12, msg=key)


GAT_CASES = list(itertools.product(
    [1, 3],  # heads
    [(0.0, 0.0), (0.3, 0.25)],  # feature drop, attention drop (train mode)
    [0.2, 0.05],  # negative slope
    [False, "identity", "linear"],  # residual
    [True, False],  # bias
    [True, False],  # self-loops
))


@pytest.mark.parametrize("heads,drops,slope,residual,bias,self_loops", GAT_CASES)
def test_gat_equals_dgl(heads, drops, slope, residual, bias, self_loops) -> None:
    out = 4
    in_feats = out * heads if residual == "identity" else 7
    kwargs = dict(feat_drop=drops[0], attn_drop=drops[1], negative_slope=slope,
                  residual=bool(residual), bias=bias, activation=torch.nn.functional.elu)
    torch.manual_seed(0)
    ref = GATConv(in_feats, out, heads, **kwargs)
    mine = DenseGATConv(in_feats, out, heads, **kwargs)
    assert ref.state_dict().keys() == mine.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert mine.state_dict()[key].shape == value.shape, key
    feat = torch.randn(B, V, in_feats)
    graph = batched_graph(B, V, self_loops)
    _compare(ref, mine, graph, feat, self_loops, seed=11, train=drops != (0.0, 0.0),
             shape=(heads, out))


@pytest.mark.parametrize("norm,in_feats,bias,self_loops", list(itertools.product(
    ["both", "none", "left", "right"], [9, 3], [True, False], [True, False])))
def test_gcn_equals_dgl(norm, in_feats, bias, self_loops) -> None:
    """in > out: weight before aggregation; in <= out: after (DGL's order)."""
    torch.manual_seed(0)
    ref = GraphConv(in_feats, 5, norm=norm, bias=bias, activation=torch.nn.functional.elu)
    mine = DenseGraphConv(in_feats, 5, norm=norm, bias=bias,
                          activation=torch.nn.functional.elu)
    assert ref.state_dict().keys() == mine.state_dict().keys()
    graph = batched_graph(B, V, self_loops)
    _compare(ref, mine, graph, torch.randn(B, V, in_feats), self_loops, seed=3, train=True,
             shape=(5,))


def test_initialisation_matches_dgl_in_distribution() -> None:
    """Same initialisers: the same seed gives the same initial weights."""
    torch.manual_seed(5)
    ref = GATConv(16, 8, 2)
    torch.manual_seed(5)
    mine = DenseGATConv(16, 8, 2)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(mine.state_dict()[key], value, msg=key)
    torch.manual_seed(5)
    ref_gcn = GraphConv(16, 8)
    torch.manual_seed(5)
    mine_gcn = DenseGraphConv(16, 8)
    torch.testing.assert_close(mine_gcn.weight, ref_gcn.weight)
