"""Benchmark: `fit_fold` with the backbone trained vs frozen on cached feature maps.

Both runs train `mmfusion` with the config's model and train settings (a few epochs, warm-up
1) on the same random 120-patient cohort at the config's patch sizes (80 train / 20 val /
20 test), one after the other in one process. Reports the training part of an epoch, the
whole `fit_fold` wall time per epoch (validation with the diffusion samples, threshold and
test included) and the one-off cost of building the feature cache.

    python bench/bench_frozen.py [--epochs N] [--threads T]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmfusion.model.mmfusion import ModelConfig  # noqa: E402
from mmfusion.train.dataset import SplitData, build_patch_cache, open_patch_cache  # noqa: E402
from mmfusion.train.features import build_feature_cache, open_feature_cache  # noqa: E402
from mmfusion.train.loop import TrainConfig, fit_fold  # noqa: E402

WIDTHS = {"clinical": 20, "hematology": 11, "radiomics_tumour": 8, "radiomics_node": 7}
N = 120
PARTS = {"train": np.arange(0, 80), "val": np.arange(80, 100), "test": np.arange(100, 120)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    model_section = {k: v for k, v in config["model"].items() if k != "variants"}
    train_section = {**config["train"], "epochs": args.epochs, "warmup_epochs": 1,
                     "select_from": 0, "progress": False, "device": "cpu"}
    crop = config["crop"]
    sizes = {"tumour": tuple(crop["tumour_size"]),
             **{f"node{i + 1}": tuple(s) for i, s in enumerate(crop["node_sizes"])}}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_frozen_") as tmp_name:
        tmp = Path(tmp_name)
        ids, paths = [], []
        for i in range(N):
            path = tmp / f"P{i:03d}.npz"
            np.savez(path, **{k: rng.random(s, dtype=np.float32) for k, s in sizes.items()},
                     node_present=(np.arange(3) < rng.integers(0, 4)).astype(np.uint8))
            ids.append(f"P{i:03d}")
            paths.append(path)
        build_patch_cache(ids, paths, tmp / "cache")
        tables = {g: rng.standard_normal((N, w)).astype(np.float32) for g, w in WIDTHS.items()}
        labels = (rng.random(N) < 0.4).astype(np.int64)
        labels[:2] = [0, 1]

        def splits(arrays):
            served = {k: v for k, v in arrays.items() if k != "node_present"}
            return {s: SplitData([ids[i] for i in r], served, arrays["node_present"],
                                 {g: a[r] for g, a in tables.items()}, labels[r], r)
                    for s, r in PARTS.items()}

        result = {}
        for frozen in (False, True):
            model_cfg = ModelConfig.from_config({**model_section, "variant": "mmfusion",
                                               "freeze_backbone": frozen})
            train_cfg = TrainConfig.from_config(train_section)
            t0 = time.perf_counter()
            features = None
            if frozen:
                features = build_feature_cache(tmp / "cache", model_cfg, train_cfg.seed,
                                               tmp / "features", batch_size=12, progress=False)
                data = splits(open_feature_cache(features)[1])
            else:
                data = splits(open_patch_cache(tmp / "cache")[1])
            t1 = time.perf_counter()
            metrics = fit_fold(model_cfg, train_cfg, data, tmp / f"run{int(frozen)}",
                               features=features)
            t2 = time.perf_counter()
            result[frozen] = {"epoch": metrics["mean_epoch_seconds"],
                              "wall": (t2 - t1) / args.epochs, "cache": t1 - t0}
        print(f"fit_fold, mmfusion, config model/train settings, {args.epochs} epochs, "
              f"80/20/20 patients, {torch.get_num_threads()} threads")
        for frozen, r in result.items():
            label = "frozen, cached maps" if frozen else "backbone trained   "
            print(f"  {label}: training part of an epoch {r['epoch']:.2f} s, fit_fold wall per"
                  f" epoch {r['wall']:.2f} s" + (f", feature cache {r['cache']:.2f} s"
                                                  if frozen else ""))
        print(f"  ratio: training part {result[False]['epoch'] / result[True]['epoch']:.1f}x, "
              f"wall {result[False]['wall'] / result[True]['wall']:.1f}x")


if __name__ == "__main__":
    main()
