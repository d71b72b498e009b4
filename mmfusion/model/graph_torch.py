"""DGL's `GATConv` and `GraphConv` on HGA's graphs, in plain torch (`model.graph_backend: torch`).

HGA's graph (`mmfusion.model.hga`) is, per patient, the complete graph on its V modality
vertices, with a self-loop on each (or without, `self_loops=False`), and a batch is B
disjoint copies. On such graphs message passing is dense: for patient b, destination i
and source j,

    GAT (eq. 1):  e_bji = LeakyReLU(a_l · W h_bj + a_r · W h_bi)
                  α_bji = softmax_j(e_bji)            (over i's in-neighbours j)
                  h'_bi = act( Σ_j α_bji W h_bj + bias [+ residual] )
    GCN:          h'_bi = act( d_i^-1/2 Σ_j d_j^-1/2 h_bj W + bias )   (norm "both"; d = V)

computed with batched tensor operations on any device, no graph library. Parameter names,
shapes and initialisation are DGL 2.x's (`fc.weight`, `attn_l`, `attn_r`, `bias`,
`res_fc.weight`; `weight`, `bias`), so a state dict moves between the backends unchanged.
Dropout masks are drawn on tensors of DGL's shapes in DGL's order (features `(B·V, in)`;
attention `(E, heads, 1)` with edges in `complete_graph`'s order), so with the same random
state both backends drop the same entries. Input `(B, V, in)`; output `(B, V, heads, out)`
(GAT) or `(B, V, out)` (GCN), the layout of DGL's output on the batched graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Activation = Callable[[torch.Tensor], torch.Tensor] | None


def _edge_mask(v: int, self_loops: bool, device: torch.device) -> torch.Tensor | None:
    """`(V_src, V_dst)` True where an edge exists; None when every pair has one."""
    if self_loops:
        return None
    return ~torch.eye(v, dtype=torch.bool, device=device)


class DenseGATConv(nn.Module):
    """`dgl.nn.GATConv(in_feats, out_feats, num_heads, ...)` on complete graphs (module
    docstring); same arguments (no `allow_zero_in_degree`: every vertex has in-edges when
    V > 1 or with self-loops)."""

    def __init__(self, in_feats: int, out_feats: int, num_heads: int, feat_drop: float = 0.0,
                 attn_drop: float = 0.0, negative_slope: float = 0.2, residual: bool = False,
                 activation: Activation = None, bias: bool = True) -> None:
        super().__init__()
        self._num_heads, self._out_feats = num_heads, out_feats
        self.fc = nn.Linear(in_feats, out_feats * num_heads, bias=False)
        self.attn_l = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.attn_r = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.feat_drop = nn.Dropout(feat_drop)
        self.attn_drop = nn.Dropout(attn_drop)
        self.leaky_relu = nn.LeakyReLU(negative_slope)
        self.has_linear_res = False
        self.has_explicit_bias = False
        if residual:
            if in_feats != out_feats * num_heads:
                self.res_fc = nn.Linear(in_feats, num_heads * out_feats, bias=bias)
                self.has_linear_res = True
            else:
                self.res_fc = nn.Identity()
        else:
            self.register_buffer("res_fc", None)
        if bias and not self.has_linear_res:
            self.bias = nn.Parameter(torch.empty(num_heads * out_feats))
            self.has_explicit_bias = True
        else:
            self.register_buffer("bias", None)
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DGL's initialisation: Xavier normal (gain of ReLU) for fc and attention, zero
        bias, Xavier normal for a linear residual."""
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_normal_(self.fc.weight, gain=gain)
        nn.init.xavier_normal_(self.attn_l, gain=gain)
        nn.init.xavier_normal_(self.attn_r, gain=gain)
        if self.has_explicit_bias:
            nn.init.constant_(self.bias, 0)
        if isinstance(self.res_fc, nn.Linear):
            nn.init.xavier_normal_(self.res_fc.weight, gain=gain)
            if self.res_fc.bias is not None:
                nn.init.constant_(self.res_fc.bias, 0)

    def forward(self, feat: torch.Tensor, self_loops: bool = True) -> torch.Tensor:
        b, v, _ = feat.shape
        heads, out = self._num_heads, self._out_feats
        h = self.feat_drop(feat.reshape(b * v, -1))  # DGL's (N, in), same mask order
        ft = self.fc(h).view(b, v, heads, out)
        el = (ft * self.attn_l).sum(dim=-1)  # (B, V, heads): source term a_l · W h_j
        er = (ft * self.attn_r).sum(dim=-1)  # destination term a_r · W h_i
        e = self.leaky_relu(el[:, :, None, :] + er[:, None, :, :])  # (B, src, dst, heads)
        mask = _edge_mask(v, self_loops, feat.device)
        if mask is not None:
            e = e.masked_fill(~mask[None, :, :, None], float("-inf"))
        a = torch.softmax(e, dim=1)  # over each destination's sources (DGL's edge_softmax)
        if self.training and self.attn_drop.p > 0:
            a = self._drop_edges(a, mask)
        rst = torch.einsum("bjih,bjhf->bihf", a, ft)  # (B, dst, heads, out)
        if self.res_fc is not None:
            rst = rst + self.res_fc(h).view(b, v, -1, out)
        if self.has_explicit_bias:
            rst = rst + self.bias.view(1, 1, heads, out)
        return self.activation(rst) if self.activation else rst


    def _drop_edges(self, a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention dropout on the existing edges only, as DGL's `(E, heads, 1)` tensor in
        its edge order (patient-major, then source-major: `complete_graph`)."""
        b, v, _, heads = a.shape
        flat = a.reshape(b, v * v, heads)
        if mask is None:
            return self.attn_drop(flat.reshape(-1, heads, 1)).view(b, v, v, heads)
        edges = mask.flatten().nonzero().squeeze(1)
        kept = self.attn_drop(flat[:, edges].reshape(-1, heads, 1)).view(b, -1, heads)
        return torch.zeros_like(flat).index_copy(1, edges, kept).view(b, v, v, heads)


class DenseGraphConv(nn.Module):
    """`dgl.nn.GraphConv(in_feats, out_feats, norm, weight=True, bias, activation)` on
    complete graphs (module docstring): every vertex has degree V (V - 1 without
    self-loops), so norm `both` scales by d^-1/2 on both sides, `left`/`right` by 1/d on one,
    `none` not at all. The weight is applied before aggregating when in > out, after it
    otherwise, as DGL does."""

    def __init__(self, in_feats: int, out_feats: int, norm: str = "both", bias: bool = True,
                 activation: Activation = None) -> None:
        super().__init__()
        if norm not in ("none", "both", "right", "left"):
            raise ValueError(f"norm must be none, both, right or left, got {norm!r}")
        self._in_feats, self._out_feats, self._norm = in_feats, out_feats, norm
        self.weight = nn.Parameter(torch.empty(in_feats, out_feats))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_feats))
        else:
            self.register_parameter("bias", None)
        self._activation = activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DGL's initialisation: Xavier uniform weight, zero bias."""
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, feat: torch.Tensor, self_loops: bool = True) -> torch.Tensor:
        b, v, _ = feat.shape
        degree = torch.tensor(float(max(v if self_loops else v - 1, 1)), dtype=feat.dtype,
                              device=feat.device)
        h = feat
        if self._norm in ("left", "both"):
            h = h * (degree.pow(-0.5) if self._norm == "both" else 1.0 / degree)
        mask = _edge_mask(v, self_loops, feat.device)

        def aggregate(x: torch.Tensor) -> torch.Tensor:  # Σ over each vertex's sources
            if mask is None:
                return x.sum(dim=1, keepdim=True).expand(-1, v, -1)
            return torch.einsum("ji,bjf->bif", mask.to(x.dtype), x)

        if self._in_feats > self._out_feats:
            rst = aggregate(torch.matmul(h, self.weight))
        else:
            rst = torch.matmul(aggregate(h), self.weight)
        if self._norm in ("right", "both"):
            rst = rst * (degree.pow(-0.5) if self._norm == "both" else 1.0 / degree)
        if self.bias is not None:
            rst = rst + self.bias
        return self._activation(rst) if self._activation is not None else rst
