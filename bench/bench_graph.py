"""HGA's graph layer: DGL vs the torch backend, forward + backward, side by side.

Times one training step of the graph layer alone (GATConv or GraphConv on B patients' complete
graphs of 6 vertices, width 64 -> 64) for each backend, interleaved (DGL, torch, DGL, ...)
so both see the same machine state; median of `--repeats` runs. CPU here; `--device cuda`
on a GPU machine (DGL only where it has CUDA).

    python bench/bench_graph.py --batch 12 120 --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfusion.model.hga import HGA  # noqa: E402

WIDTHS = {f"v{i}": 64 for i in range(6)}


def _step(hga: HGA, inputs: dict[str, torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    hga.zero_grad(set_to_none=True)
    hga.aggregate(inputs["vertices"]).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[12, 120])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--conv", choices=["gat", "gcn"], nargs="+", default=["gat", "gcn"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {device}; median of "
          f"{args.repeats} interleaved steps (forward + backward of the graph layer)")
    print(f"{'conv':5} {'batch':>5} {'dgl ms':>8} {'torch ms':>9} {'torch/dgl':>9}")
    for conv in args.conv:
        for b in args.batch:
            layers = {}
            for backend in ("dgl", "torch"):
                torch.manual_seed(0)
                layers[backend] = HGA(WIDTHS, 64, 64, heads=1, conv=conv,
                                      backend=backend).to(device)
            layers["torch"].load_state_dict(layers["dgl"].state_dict())
            vertices = torch.randn(b, 6, 64, device=device, requires_grad=True)
            inputs = {"vertices": vertices}
            times: dict[str, list[float]] = {"dgl": [], "torch": []}
            for i in range(args.repeats + 10):
                for backend, hga in layers.items():
                    t = _step(hga, inputs, device)
                    if i >= 10:  # warm-up
                        times[backend].append(t)
            dgl_ms = 1000 * statistics.median(times["dgl"])
            torch_ms = 1000 * statistics.median(times["torch"])
            print(f"{conv:5} {b:5d} {dgl_ms:8.3f} {torch_ms:9.3f} {torch_ms / dgl_ms:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
