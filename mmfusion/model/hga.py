"""Heterogeneous Graph Aggregation, HGA (paper §2.3, eq. 1).

One vertex per modality (|V_a| = 1 for every vertex type a), each with its own encoder to a
common width, on a complete graph with self-loops so that every modality attends to every
other and to itself. One GAT layer (`dgl.nn.GATConv`, supplement: GAT layers 1) updates
each vertex as

    F'_{a_i} = σ( Σ_{j ∈ {i} ∪ N_i} α_ij W F_j )                               (eq. 1)

The graph of one patient is built once; a batch is `dgl.batch` of B copies, cached per
(batch size, device), so a forward pass has no Python loop over patients. The output
f_phi(x) is the concatenation of the updated vertex features. `backend="torch"` computes
the same layer without DGL, densely over the batch (`mmfusion.model.graph_torch`; which
backend runs: `mmfusion.model.graph_backend`); its parameters have DGL's names, so a state
dict loads into either.

`conv="gcn"` (paper Table 3's GCN rows, variant `mmfusion_gcn`; also what the public
reference code uses) replaces the GAT by `dgl.nn.GraphConv` (symmetric normalisation): on
this complete graph with self-loops every vertex then takes the plain mean of W F_j over
all vertices, the fixed weights α_ij = 1/|V| in place of learned attention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmfusion.model.graph_torch import DenseGATConv, DenseGraphConv

if TYPE_CHECKING:
    import dgl

CONVS = ("gat", "gcn")
BACKENDS = ("dgl", "torch")


def complete_graph(n_vertices: int, self_loops: bool = True) -> dgl.DGLGraph:
    """Directed complete graph on `n_vertices` with a self-loop on each vertex (or none);
    edges in source-major order (edge s * n + d runs from s to d)."""
    import dgl

    src = torch.arange(n_vertices).repeat_interleave(n_vertices)
    dst = torch.arange(n_vertices).repeat(n_vertices)
    if not self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    return dgl.graph((src, dst), num_nodes=n_vertices)


class HGA(nn.Module):
    """Modality graph + one GAT layer.

    Args:
        in_widths: vertex type -> input width, in vertex order (e.g. `tumour_image`,
            `node_image`, `clinical`, `hematology`, `radiomics_tumour`, `radiomics_node`).
        dim: common vertex width after the type-specific encoders.
        out_dim: GAT output width per vertex (all heads together).
        heads: GAT attention heads (`out_dim` must be divisible by it; GCN: unused).
        dropout: dropout on the encoded vertex features.
        conv: `gat` (paper eq. 1) or `gcn` (Table 3 ablation).
        backend: `dgl` or `torch` (resolved: `mmfusion.model.graph_backend`).

    Forward: mapping vertex type -> `(B, in_width)` -> f_phi(x) `(B, n_vertices * out_dim)`.
    """

    def __init__(self, in_widths: Mapping[str, int], dim: int = 64, out_dim: int = 64,
                 heads: int = 1, dropout: float = 0.0, conv: str = "gat",
                 backend: str = "dgl") -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"HGA conv must be one of {list(CONVS)}, got {conv!r}")
        if backend not in BACKENDS:
            raise ValueError(f"HGA backend must be one of {list(BACKENDS)}, got {backend!r}")
        if conv == "gat" and out_dim % heads:
            raise ValueError(f"HGA out_dim {out_dim} is not divisible by {heads} heads")
        self.vertex_types: Sequence[str] = tuple(in_widths)
        self.encoders = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(width, dim), nn.LayerNorm(dim), nn.GELU(),
                                nn.Dropout(dropout))
            for name, width in in_widths.items()
        })
        self.conv, self.backend = conv, backend
        if backend == "dgl":
            from dgl.nn import GATConv, GraphConv
        else:
            GATConv, GraphConv = DenseGATConv, DenseGraphConv  # noqa: N806 - DGL's names
        if conv == "gat":
            self.gat = GATConv(dim, out_dim // heads, num_heads=heads,
                               activation=nn.functional.elu)
        else:
            self.gcn = GraphConv(dim, out_dim, activation=nn.functional.elu)
        self.out_dim = len(self.vertex_types) * out_dim
        self._graph: Any = complete_graph(len(self.vertex_types)) if backend == "dgl" else None
        self._batched: dict[tuple[int, str], Any] = {}

    def batched_graph(self, batch_size: int, device: torch.device) -> dgl.DGLGraph:
        """`dgl.batch` of `batch_size` patient graphs, built once per (size, device)."""
        import dgl

        key = (batch_size, str(device))
        if key not in self._batched:
            self._batched[key] = dgl.batch([self._graph] * batch_size).to(device)
        return self._batched[key]

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Type-specific encoders -> vertex features `(B, V, dim)`."""
        missing = [name for name in self.vertex_types if name not in inputs]
        if missing:
            raise KeyError(f"HGA inputs lack vertex types {missing}")
        return torch.stack([self.encoders[name](inputs[name]) for name in self.vertex_types],
                           dim=1)

    def aggregate(self, vertices: torch.Tensor) -> torch.Tensor:
        """Eq. 1 on `(B, V, dim)` vertex features -> `(B, V * out_dim)`."""
        b, v, d = vertices.shape
        layer = self.gat if self.conv == "gat" else self.gcn
        if self.backend == "torch":  # (B, V, heads, out/heads) or (B, V, out)
            return layer(vertices).reshape(b, -1)
        graph = self.batched_graph(b, vertices.device)
        # GAT: (B*V, heads, out/heads); GCN: (B*V, out)
        out = layer(graph, vertices.reshape(b * v, d))
        return out.reshape(b, -1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.aggregate(self.encode(inputs))
