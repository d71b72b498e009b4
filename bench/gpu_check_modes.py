"""Graph modes for `bench/gpu_check.py`: where mmfusion's HGA graph layer runs.

- `torch`: the torch graph layers (`model.graph_backend: torch`) on the device.
- `dgl-hybrid`: DGL's layers on the CPU, everything else on the device (issue 20's hybrid).
  Where DGL has no CUDA this is what `graph_backend: dgl` does by itself on a GPU; where it
  has CUDA (or on the CPU, as a smoke run) the graph layer is pinned to the CPU
  (`HGA.pin_graph_layer`) so that the same crossing runs.
- `dgl`: DGL's layers on the device (a GPU only with a CUDA build of DGL).

`graph_timer` times the crossing for one training epoch (`mmfusion.model.hga.GraphTimer`,
with a CUDA synchronise around each reading), `snapshot`/`changed` tell whether training
moved the graph layer's and the other parameters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from mmfusion.model.graph_backend import dgl_cuda_status, dgl_status
from mmfusion.model.hga import GraphTimer

MODES = ("torch", "dgl-hybrid", "dgl")
NO_GPU_EXIT = 3  # `make gpu-check` treats it as success (argparse's errors exit 2)


def mode_setup(mode: str, device: torch.device) -> tuple[str, bool, str | None]:
    """(`model.graph_backend`, pin the graph layer to the CPU, why the mode cannot run)."""
    if mode == "torch":
        return "torch", False, None
    ok, why = dgl_status()
    if not ok:
        return "dgl", False, f"DGL does not import ({why})"
    dgl_cuda = device.type == "cuda" and dgl_cuda_status()[0]
    if mode == "dgl-hybrid":  # automatic without a CUDA DGL on a GPU, else pinned
        return "dgl", device.type == "cpu" or dgl_cuda, None
    if mode == "dgl":
        if device.type == "cuda" and not dgl_cuda:
            return "dgl", False, f"needs a CUDA DGL: {dgl_cuda_status()[1]}"
        return "dgl", False, None
    raise ValueError(f"unknown graph mode {mode!r}; one of {MODES}")


def pin_graph_to_cpu(run: Any) -> None:
    """Pin the model's (and its weight average's) graph layer to the CPU."""
    run.model.hga.pin_graph_layer("cpu")
    if run.ema is not None:
        run.ema.model.hga.pin_graph_layer("cpu")


@contextlib.contextmanager
def graph_timer(model: Any, device: torch.device) -> Iterator[GraphTimer | None]:
    """`model.hga.timer` for the duration (None without a graph)."""
    if getattr(model, "hga", None) is None:
        yield None
        return
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    timer = GraphTimer(sync)
    model.hga.timer = timer
    try:
        yield timer
    finally:
        model.hga.timer = None


def graph_share(timer: GraphTimer | None, train_s: float) -> dict[str, float]:
    """The timed epoch's graph section: seconds by part and shares of the epoch."""
    if timer is None or train_s <= 0:
        return {}
    s = timer.seconds
    copies = s["copy_in"] + s["copy_out"]
    return {"graph_forward_s": s["copy_in"] + s["layer"] + s["copy_out"],
            "graph_copy_s": copies, "graph_backward_s": s["backward"],
            "graph_calls": float(timer.calls),
            "copy_share": copies / train_s,
            "graph_share": (s["copy_in"] + s["layer"] + s["copy_out"] + s["backward"])
            / train_s}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Whether training moved the graph layer's parameters and the others, and whether all
    are finite."""
    params = dict(model.named_parameters())
    graph = {k for k in before if k.startswith(("hga.gat.", "hga.gcn."))}
    moved = {k for k, v in before.items() if not torch.equal(params[k].detach(), v)}
    finite = all(bool(torch.isfinite(params[k]).all()) for k in before)
    return {"graph_params_updated": bool(graph) and graph <= moved,
            "other_params_updated": bool(moved - graph), "params_finite": finite}


def trains(row: dict[str, Any]) -> bool:
    """A run trains: finite loss and parameters, and every part updated."""
    return (math.isfinite(row.get("loss", math.nan)) and row.get("params_finite", False)
            and row.get("other_params_updated", False)
            and row.get("graph_params_updated", True))


def amp_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """mode -> amp -> trains (True/False) or why it was skipped."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("mode"):
            out.setdefault(r["mode"], {})[r["amp"]] = r.get("skipped") or trains(r)
    return out


def mode_table(rows: list[dict[str, Any]]) -> str:
    """One line per (graph mode, amp) run."""
    head = (f"{'mode':10} {'amp':5} {'graph on':8} {'samples/s':>9} {'step ms':>8} "
            f"{'copy %':>7} {'graph %':>7} {'peak GiB':>8} {'loss':>7} trains")
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.get("mode"):
            continue
        if "skipped" in r:
            lines.append(f"{r['mode']:10} {r['amp']:5} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['mode']:10} {r['amp']:5} {r['graph_device']:8} "
                     f"{r['samples_s']:9.1f} {r['step_ms']:8.1f} "
                     f"{100 * r.get('copy_share', math.nan):6.2f}% "
                     f"{100 * r.get('graph_share', math.nan):6.2f}% {r['peak_gib']:8.2f} "
                     f"{r['loss']:7.3f} {'yes' if trains(r) else 'NO'}")
    return "\n".join(lines)
