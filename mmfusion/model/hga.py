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

Hybrid device (`mmfusion.model.graph_backend.graph_device_for`): with `backend="dgl"` and a
model moved to a device this DGL cannot run on (PyPI's CPU-only DGL, model on a GPU), the
graph layer (`gat` / `gcn`: graph + GATConv/GraphConv) keeps its parameters on the CPU
across `.to()` / `.cuda()` (`HGA._apply`; dtype changes still apply), while the encoders
move. `aggregate` then sends the `(B, V, dim)` vertex features to the CPU in the layer's
dtype (float32; autocast off there) and the result back, through differentiable copies, so
gradients reach both sides. The state-dict keys do not change, so a checkpoint loads into
a model on either device. `pin_graph_layer` forces a graph device (tests, benchmarks);
`timer` (off by default) times the copies and the layer (`GraphTimer`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmfusion.model.graph_backend import graph_device_for
from mmfusion.model.graph_torch import DenseGATConv, DenseGraphConv

if TYPE_CHECKING:
    import dgl

log = logging.getLogger(__name__)
CONVS = ("gat", "gcn")
BACKENDS = ("dgl", "torch")
_said: set[str] = set()


class GraphTimer:
    """Wall time of HGA's graph section, for benchmarks (`HGA.timer`; off by default).

    `seconds`: `copy_in` (vertex features to the graph device), `layer` (graph layer,
    forward), `copy_out` (result back), `backward` (from the output's gradient to the
    vertex features' gradient: the layer's backward and, in hybrid mode, both copies).
    `sync` runs before each clock reading (`torch.cuda.synchronize` on a GPU).
    """

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self.seconds = {"copy_in": 0.0, "layer": 0.0, "copy_out": 0.0, "backward": 0.0}
        self.calls = 0

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        t0 = self.now()
        yield
        self.seconds[name] += self.now() - t0

    def watch_backward(self, vertices: torch.Tensor, out: torch.Tensor) -> None:
        """Time the backward pass from `out`'s gradient to `vertices`' gradient."""
        if not (torch.is_grad_enabled() and out.requires_grad and vertices.requires_grad):
            return
        start: list[float] = []
        out.register_hook(lambda g: start.append(self.now()))

        def stop(g: torch.Tensor) -> None:
            if start:
                self.seconds["backward"] += self.now() - start.pop()

        vertices.register_hook(stop)


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
        self.pinned_graph_device: torch.device | None = None  # pin_graph_layer
        self.pinned_graph_dtype: torch.dtype | None = None
        self.timer: GraphTimer | None = None

    # ---- where the graph layer lives ----------------------------------------------------
    @property
    def graph_layer(self) -> nn.Module:
        """The GATConv (`gat`) or GraphConv (`gcn`)."""
        return self.gat if self.conv == "gat" else self.gcn

    @property
    def graph_device(self) -> torch.device:
        """Where the graph layer's parameters are, i.e. where the graph runs."""
        return next(self.graph_layer.parameters()).device

    def pin_graph_layer(self, device: torch.device | str | None,
                        dtype: torch.dtype | None = None) -> HGA:
        """Keep the graph layer on `device` (and in `dtype`, if given) through every later
        `.to()`, moved there now, and send it the vertex features across even from the
        same device (tests: a hybrid on one machine); None: the automatic choice."""
        self.pinned_graph_device = None if device is None else torch.device(device)
        self.pinned_graph_dtype = None if device is None else dtype
        if device is not None:
            self.graph_layer.to(device, dtype)
        return self

    def _graph_home(self, target: torch.device) -> torch.device:
        """The graph layer's device when the model moves to `target`."""
        if self.pinned_graph_device is not None:
            return self.pinned_graph_device
        home, why = graph_device_for(self.backend, target)
        if home != target and why not in _said:
            _said.add(why)
            log.info("HGA graph layer on %s: %s", home, why)
        return home

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> HGA:
        """`nn.Module._apply` (`.to`, `.cuda`, `.double`, ...), except that the graph layer's
        tensors go to `_graph_home` of the target device (dtype changes still apply)."""
        if not recurse:
            return super()._apply(fn, recurse=False)
        layer = self.graph_layer
        for child in self.children():
            if child is not layer:
                child._apply(fn)

        def on_home(t: torch.Tensor) -> torch.Tensor:
            probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
            home = self._graph_home(probe.device)
            dtype = probe.dtype if self.pinned_graph_dtype is None else t.dtype
            return fn(t) if (home, dtype) == (probe.device, probe.dtype) else t.to(home, dtype)

        layer._apply(on_home)
        return super()._apply(fn, recurse=False)

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
        """Eq. 1 on `(B, V, dim)` vertex features -> `(B, V * out_dim)`, on the graph
        layer's device (hybrid: features to the CPU in the layer's dtype, autocast off
        there, and the result back in the features' dtype)."""
        home, timer = self.graph_device, self.timer
        if home == vertices.device and self.pinned_graph_device is None:
            if timer is None:
                return self._layer_out(vertices)
            with timer.span("layer"):
                out = self._layer_out(vertices)
        else:
            timer = timer or _NO_TIMER
            dtype = next(self.graph_layer.parameters()).dtype
            with timer.span("copy_in"):
                inside = vertices.to(home, dtype)
            with torch.autocast(home.type, enabled=False), timer.span("layer"):
                inside = self._layer_out(inside)
            with timer.span("copy_out"):
                out = inside.to(vertices.device, vertices.dtype)
        if self.timer is not None:
            self.timer.calls += 1
            self.timer.watch_backward(vertices, out)
        return out

    def _layer_out(self, vertices: torch.Tensor) -> torch.Tensor:
        """The graph layer on `(B, V, dim)` features on its own device -> `(B, V*out_dim)`."""
        b, v, d = vertices.shape
        layer = self.graph_layer
        if self.backend == "torch":  # (B, V, heads, out/heads) or (B, V, out)
            return layer(vertices).reshape(b, -1)
        graph = self.batched_graph(b, vertices.device)
        # GAT: (B*V, heads, out/heads); GCN: (B*V, out)
        out = layer(graph, vertices.reshape(b * v, d))
        return out.reshape(b, -1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.aggregate(self.encode(inputs))


class _NoTimer:
    """`GraphTimer`'s spans, timing nothing."""

    @staticmethod
    def span(name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


_NO_TIMER: Any = _NoTimer()
