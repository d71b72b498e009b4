"""GPU check: mmfusion in each graph mode, then every deep variant, at the paper's shapes.

Not a test (CI never runs it). On a machine with a CUDA GPU it writes a synthetic
paper-shape cohort (random patches with a weak label signal, as `bench/bench_train.py`
makes them) into a memory-mapped patch cache, trains base1, base2, base3 and mmfusion on
one fold through the real training phases (`mmfusion.train.phases`: augmentation on the
device, validation, checkpoints, test scoring).

First mmfusion in each graph mode it can run (`bench/gpu_check_modes.py`: `torch` layers
on the GPU; `dgl-hybrid`, DGL's graph layer on the CPU and the rest on the GPU; `dgl` on
the GPU where DGL has CUDA), each with `train.amp` off, bf16 and fp16: samples/s, the
share of the last training epoch spent in the graph section (`copy %`: moving the vertex
features to the graph layer's device and back; `graph %`: copies + layer forward +
backward, timed with a CUDA synchronise around each), peak GPU memory, and whether the run
trains (finite loss and parameters, graph layer and the rest updated). Then the variant
sweep, each with `train.amp` off and bf16, one row per run: device, the graph backend
(`model.graph_backend: auto`: DGL where it can run on the device, else the torch layers),
step time, samples/s, training-epoch time, validation and checkpoint time, peak GPU
memory (`torch.cuda.max_memory_allocated`) and the share of the training epoch spent
waiting for data. The first epoch (cuDNN and
allocator warm-up; for mmfusion the guide warm-up) is left out of the timings when there
are more. It takes a free GPU the way training jobs do (`mmfusion.train.gpu_lock`).

    python bench/gpu_check.py                      # paper shapes, ResNet-18, 120 patients
    python bench/gpu_check.py --depth 50 --epochs 2
    python bench/gpu_check.py --device cpu --tiny  # smoke run of the code path, no GPU
    python bench/gpu_check.py --variants ""        # graph modes only

Paper shapes: tumour 42x128x128, nodes 22x90x90, 16x68x68, 8x48x48, one backbone per patch
kind (width 64, 132 M parameters at depth 18), batch 12: 5.7 TFLOP per training step at
depth 18, 7.8 at depth 50 (torch's FLOP counter), i.e. well under a second per step on a
current GPU. Each run writes its 1.6 GB resumable checkpoint every epoch, as training
does. `--budget-minutes` (default 7.5) skips a run that would end after it, judged by
the longest run so far. Everything printed also goes to a JSON file (`--json`, default
`bench_results/gpu_check.json`). Exit 3 (`NO_GPU_EXIT`; `make gpu-check` counts it as
success) with one line when `--device cuda` (the default) finds no CUDA GPU; 0 after a
check, 1 when a run fails to train. In the variant sweep, with PyPI's CPU-only DGL on a GPU
machine, base3 and mmfusion run their graph layer in torch on the GPU (`graph_backend:
auto`, `mmfusion.model.graph_backend`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check_modes as modes  # noqa: E402

from mmfusion.errors import ConfigError  # noqa: E402
from mmfusion.model.mmfusion import NODE_KEYS, ModelConfig  # noqa: E402
from mmfusion.model.variants import VARIANTS  # noqa: E402
from mmfusion.train.config import TrainConfig  # noqa: E402
from mmfusion.train.dataset import PATCH_KINDS, SplitData, open_patch_cache  # noqa: E402
from mmfusion.train.device import (  # noqa: E402
    describe_device,
    dgl_cuda_status,
    graph_placement,
    precision_for,
    torch_cuda_status,
)
from mmfusion.train.loop import _setup_run  # noqa: E402
from mmfusion.train.metrics import json_safe  # noqa: E402
from mmfusion.train.phases import (  # noqa: E402
    record_epoch,
    score_test,
    train_epoch,
    validate_and_select,
)

SHAPES: dict[str, dict[str, Any]] = {
    "paper": {"tumour": (42, 128, 128), "nodes": [(22, 90, 90), (16, 68, 68), (8, 48, 48)],
              "model": {"base_width": 64, "shared_backbone": False}},
    "tiny": {"tumour": (20, 48, 48), "nodes": [(8, 32, 32), (8, 24, 24), (8, 24, 24)],
             "model": {"depth": 10, "base_width": 8, "shared_backbone": True, "mmrl_dim": 32,
                       "hga_dim": 32, "hga_out": 32, "head_hidden": 64,
                       "diffusion_hidden": 64, "n_samples": 4}},
}
TABLE_WIDTHS = {"clinical": 20, "hematology": 11, "radiomics_tumour": 8, "radiomics_node": 7}


def make_splits(root: Path, shapes: dict[str, Any], n: int, seed: int = 0
                ) -> dict[str, SplitData]:
    """`n` random patients in a memory-mapped patch cache (the layout of
    `build_patch_cache`), split 60/20/20 into train/val/test. Positives have a brighter
    tumour centre and a shifted first clinical column, so the models have something to
    learn."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    labels[:4] = [0, 1, 0, 1]
    sizes = {"tumour": shapes["tumour"], **dict(zip(NODE_KEYS, shapes["nodes"], strict=True))}
    cache = root / "cache"
    cache.mkdir(parents=True)
    for kind, size in sizes.items():
        arr = np.lib.format.open_memmap(cache / f"{kind}.npy", mode="w+", dtype=np.float32,
                                        shape=(n, *size))
        for i in range(n):
            arr[i] = rng.standard_normal(size, dtype=np.float32)
            if kind == "tumour" and labels[i]:
                d, h, w = (s // 4 for s in size)
                arr[i, d:-d, h:-h, w:-w] += 0.5
        arr.flush()
        del arr
    present = (np.arange(3)[None] < rng.integers(1, 4, n)[:, None]).astype(np.uint8)
    np.save(cache / "node_present.npy", present)
    ids = [f"P{i:03d}" for i in range(n)]
    (cache / "patients.json").write_text(json.dumps(ids))
    _, arrays = open_patch_cache(cache)
    tables = {g: rng.standard_normal((n, w)).astype(np.float32) for g, w in TABLE_WIDTHS.items()}
    tables["clinical"][:, 0] += labels
    order = rng.permutation(n)
    cut = [0, int(0.6 * n), int(0.8 * n), n]
    splits = {}
    for s, name in enumerate(("train", "val", "test")):
        rows = np.sort(order[cut[s] : cut[s + 1]])
        splits[name] = SplitData([ids[r] for r in rows], {k: arrays[k] for k in PATCH_KINDS},
                                 arrays["node_present"], {g: t[rows] for g, t in tables.items()},
                                 labels[rows], rows)
    return splits


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one(variant: str, amp: str, splits: dict[str, SplitData], model_kw: dict[str, Any],
              args: argparse.Namespace, device: torch.device, out: Path,
              mode: str | None = None) -> dict[str, Any]:
    """Train `variant` for `args.epochs` epochs at `amp` (in graph `mode`, else
    `graph_backend: auto`); timings, peak memory and, for a mode, the graph section's share
    of the last epoch and whether the parameters moved."""
    backend, pin, _ = modes.mode_setup(mode, device) if mode else ("auto", False, None)
    model_cfg = ModelConfig(variant=variant, **{**model_kw, "graph_backend": backend})
    cfg = TrainConfig.from_config({
        "epochs": args.epochs, "batch_size": args.batch,
        "warmup_epochs": min(1, args.epochs - 1),
        "select_from": 0, "seed": 0, "device": device.type, "amp": amp, "progress": False})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = _setup_run(model_cfg, cfg, splits, out, 0, None, device=device)
    if pin:
        modes.pin_graph_to_cpu(run)
    before = modes.snapshot(run.model)
    epochs, share = [], {}
    for epoch in range(cfg.epochs):
        timed = mode is not None and epoch == cfg.epochs - 1  # the graph timer's epoch
        with (modes.graph_timer(run.model, device) if timed
              else contextlib.nullcontext()) as timer:
            _sync(device)
            t0 = time.perf_counter()
            stats = train_epoch(run, splits["train"], epoch)
            _sync(device)
            t1 = time.perf_counter()
        if timed:
            share = modes.graph_share(timer, t1 - t0)
        val_auc, val_brier = validate_and_select(run, splits["val"], epoch, stats.phase)
        _sync(device)
        t2 = time.perf_counter()
        row = record_epoch(run, epoch, stats, val_auc, val_brier)
        t3 = time.perf_counter()
        epochs.append({"train_s": t1 - t0, "val_s": t2 - t1, "ckpt_s": t3 - t2,
                       "n_seen": stats.n_seen, "data_s": stats.t_data, "aug_s": stats.t_aug,
                       "loss": row["train_loss"]})
    t4 = time.perf_counter()
    metrics = score_test(run, splits)
    _sync(device)
    test_s = time.perf_counter() - t4
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    # the first epoch warms up cuDNN and the allocator; a mode's last one runs the timer
    timed = (epochs[1:-1] if mode and len(epochs) > 2 else epochs[1:]) or epochs
    n = len(splits["train"])
    steps = n // cfg.batch_size + (1 if n % cfg.batch_size > 1 else 0)
    train_s = float(np.mean([e["train_s"] for e in timed]))
    result = {"variant": variant, "amp": run.precision.mode, "step_ms": 1000 * train_s / steps,
              "samples_s": float(np.mean([e["n_seen"] / e["train_s"] for e in timed])),
              "epoch_s": train_s, "val_s": float(np.mean([e["val_s"] for e in timed])),
              "ckpt_s": float(np.mean([e["ckpt_s"] for e in timed])), "test_s": test_s,
              "peak_gib": peak,
              "wait": float(np.mean([e["data_s"] / e["train_s"] for e in timed])),
              "aug": float(np.mean([e["aug_s"] / e["train_s"] for e in timed])),
              "loss": epochs[-1]["loss"], "test_auc": metrics["test"]["auc"],
              "graph": run.model.graph_backend or "-",
              **graph_placement(run.model, device), **share}
    if mode:
        result.update(mode=mode, **modes.changed(run.model, before))
    del run
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _table(device: torch.device, rows: list[dict[str, Any]]) -> str:
    head = (f"{'variant':9} {'amp':5} {'device':8} {'graph':6} {'step ms':>8} "
            f"{'samples/s':>9} {'epoch s':>8} {'val s':>6} {'ckpt s':>6} {'peak GiB':>8} "
            f"{'data wait':>9} {'aug':>6} {'loss':>6}")
    lines = [head, "-" * len(head)]
    dev = str(device)
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['variant']:9} {r['amp']:5} {dev:8} {'':6} "
                         f"skipped: {r['skipped']}")
            continue
        lines.append(f"{r['variant']:9} {r['amp']:5} {dev:8} {r['graph']:6} "
                     f"{r['step_ms']:8.1f} {r['samples_s']:9.1f} {r['epoch_s']:8.2f} "
                     f"{r['val_s']:6.2f} {r['ckpt_s']:6.2f} {r['peak_gib']:8.2f} "
                     f"{100 * r['wait']:8.1f}% {100 * r['aug']:5.1f}% {r['loss']:6.3f}")
    return "\n".join(lines)


def _runs(plan: list[tuple[str, str, str | None]], splits: dict[str, SplitData],
          model_kw: dict[str, Any], args: argparse.Namespace, device: torch.device,
          tmp: Path, start: float) -> list[dict[str, Any]]:
    """Train each (variant, amp, graph mode or None) of `plan` within the time budget."""
    rows: list[dict[str, Any]] = []
    longest = 0.0  # seconds of the longest run so far (the budget's estimate of the next)
    for variant, amp, mode in plan:
        row: dict[str, Any] = {"variant": variant, "amp": amp, "mode": mode}
        try:
            effective = precision_for(amp, device).mode
        except ConfigError as err:
            row["skipped"] = str(err)
        else:
            why = modes.mode_setup(mode, device)[2] if mode else None
            if why:
                row["skipped"] = why
            elif effective != amp:
                row["skipped"] = f"amp {amp} is ignored on the {device.type}"
            elif time.monotonic() - start + longest > 60 * args.budget_minutes:
                row["skipped"] = f"would end after the {args.budget_minutes} min budget"
        if "skipped" not in row:
            t_run = time.monotonic()
            out = tmp / f"{variant}_{amp}_{mode or 'auto'}"
            row = train_one(variant, amp, splits, model_kw, args, device, out, mode)
            shutil.rmtree(out, ignore_errors=True)  # GBs of checkpoints per run
            longest = max(longest, time.monotonic() - t_run)
            print(f"  {variant} {mode or ''} amp {amp}: {row['step_ms']:.1f} ms/step, run "
                  f"{time.monotonic() - t_run:.0f} s", flush=True)
        rows.append(row)
    return rows


def _csv(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="small shapes, ResNet-10 width 8, 16 patients, 2 epochs, batch 4")
    ap.add_argument("--depth", type=int, choices=[18, 50], default=18,
                    help="ResNet depth at width 64 (paper shapes; default 18)")
    ap.add_argument("--patients", type=int, help="cohort size (default 120; tiny 16)")
    ap.add_argument("--epochs", type=int, help="epochs per run (default 3; tiny 2)")
    ap.add_argument("--batch", type=int, help="batch size (default 12; tiny 4)")
    ap.add_argument("--modes", default=",".join(modes.MODES),
                    help="mmfusion's graph modes, comma-separated ('' for none)")
    ap.add_argument("--mode-amp", default="off,bf16,fp16",
                    help="train.amp modes of the graph-mode runs")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="variant sweep, comma-separated ('' for none)")
    ap.add_argument("--amp", default="off,bf16", help="train.amp modes of the variant sweep")
    ap.add_argument("--budget-minutes", type=float, default=7.5,
                    help="runs that would start after this are skipped")
    ap.add_argument("--workdir", help="where the cohort and checkpoints go (default: a "
                    "temporary folder, removed at the end)")
    ap.add_argument("--json", default="bench_results/gpu_check.json",
                    help="where the results go (default: bench_results/gpu_check.json)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    shapes = SHAPES["tiny" if args.tiny else "paper"]
    args.patients = args.patients or (16 if args.tiny else 120)
    args.epochs = args.epochs or (2 if args.tiny else 3)
    args.batch = args.batch or (4 if args.tiny else 12)
    model_kw = dict(shapes["model"]) if args.tiny else {**shapes["model"], "depth": args.depth}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    dgl_cuda, dgl_why = dgl_cuda_status()
    if args.device == "cuda":
        ok, why = torch_cuda_status()
        if not ok:
            print(f"gpu_check: no GPU: {why}; nothing measured")
            return modes.NO_GPU_EXIT
        from mmfusion.train.gpu_lock import acquire_gpu

        lease = acquire_gpu()
        torch.cuda.set_device(lease.index)
        device = torch.device("cuda", lease.index)
    else:
        device = torch.device("cpu")
    described = describe_device(device)
    print(described)
    print(f"shapes: tumour {shapes['tumour']}, nodes {shapes['nodes']}; model {model_kw}; "
          f"{args.patients} patients (60/20/20), batch {args.batch}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} CPU threads")
    plan = [("mmfusion", amp, mode) for mode in _csv(args.modes) for amp in _csv(args.mode_amp)]
    plan += [(variant, amp, None) for amp in _csv(args.amp) for variant in _csv(args.variants)]
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        splits = make_splits(Path(tmp), shapes, args.patients)
        print(f"cohort written in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = _runs(plan, splits, model_kw, args, device, Path(tmp), start)
    print(f"DGL CUDA: {'yes' if dgl_cuda else f'no ({dgl_why})'}")
    mode_rows = [r for r in rows if r.get("mode")]
    if mode_rows:
        print(modes.mode_table(mode_rows))
        print("copy % / graph %: share of the last training epoch spent moving the vertex "
              "features to the graph layer and back / in the whole graph section (copies, "
              "layer, backward)")
    sweep = [r for r in rows if not r.get("mode")]
    if sweep:
        print(_table(device, sweep))
    total = time.monotonic() - start
    print(f"total {total:.0f} s; step/epoch/val/ckpt times are means over epochs "
          f"2..{args.epochs} (all when 1; a mode's last epoch, which runs the graph timer, "
          "left out when there are 3 or more); data wait / aug = share of the training "
          "epoch the loop spent reading batches / augmenting them (CPU random numbers)")
    report = {"device": str(device), "describe": described, "dgl_cuda": dgl_cuda,
              "dgl_cuda_reason": dgl_why, "shapes": shapes["tumour"], "model": model_kw,
              "patients": args.patients, "epochs": args.epochs, "batch": args.batch,
              "amp_trains": modes.amp_summary(rows), "runs": rows, "total_s": total}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(report), indent=1) + "\n")
    print(f"written: {path}")
    failed = [r for r in mode_rows if "skipped" not in r and not modes.trains(r)]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
