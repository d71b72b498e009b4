"""Benchmark: `model.diffusion_conditioning` train vs card, on synthetic tuning cohorts.

For each cohort seed (not the demo's), the workflow builds the demo cohort with that
`synth.seed` up to the patch cache and the folds (demo config otherwise: 120 patients,
3 folds); then `fit_fold` trains `mmfusion` on each fold once per conditioning mode, with
the demo config's model and train settings, same seeds. Reported per fold and mode: the
test AUC of the chosen checkpoint (its CFD output, as the workflow scores it), the test AUC
of that checkpoint's guide head alone, and the oracle AUC (true probabilities from
`truth.csv`) of the same test patients; then the mean AUC / oracle per mode.

    python bench/bench_card.py [--seeds 777 778] [--folds 0 1 2] [--jobs 2] [--work DIR]

Each training run uses one torch thread; `--jobs` runs that many at once. Cohorts already
built in `--work` are reused.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("train", "card")


def build_cohort(work: Path, seed: int, cores: int) -> tuple[Path, dict[str, Any]]:
    """The demo workflow with `synth.seed = seed` up to the folds and the patch cache.
    Returns the results folder and the config used."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    results = work / f"seed{seed}"
    config["results"] = str(results)
    config["synth"]["seed"] = seed
    config["model"]["variants"] = ["mmfusion"]
    results.mkdir(parents=True, exist_ok=True)
    cfg = work / f"seed{seed}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    targets = [results / "cohort" / "folds.tsv", results / "cohort" / "feature_spec.json",
               results / "cache" / "patches", results / "demo_cohort" / "truth.csv"]
    if not all(t.exists() for t in targets):
        bindir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        res = subprocess.run([str(Path(bindir) / "snakemake"), "--cores", str(cores),
                              "--configfile", str(cfg), "--nolock", *map(str, targets)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"cohort seed {seed} failed:\n{res.stdout[-3000:]}"
                             f"\n{res.stderr[-3000:]}")
    return results, config


def train_one(results: Path, config: dict[str, Any], fold: int, mode: str) -> dict[str, Any]:
    """Train mmfusion on `fold` with conditioning `mode`; test AUC of CFD and guide head."""
    import torch

    from mmfusion.model.mmfusion import ModelConfig
    from mmfusion.train.fold import load_fold
    from mmfusion.train.loop import TrainConfig, fit_fold
    from mmfusion.train.metrics import safe_auc

    torch.set_num_threads(1)
    cohort = results / "cohort"
    splits = load_fold(cohort / "table.tsv", cohort / "feature_spec.json",
                       cohort / "folds.tsv", results / "cache" / "patches", fold,
                       config["preprocess"])
    model_cfg = ModelConfig.from_config({**config["model"], "variant": "mmfusion",
                                         "diffusion_conditioning": mode})
    train_cfg = TrainConfig.from_config({**config["train"], "device": "cpu",
                                         "progress": False})
    out = results / "bench_card" / mode / f"fold{fold}"
    t0 = time.perf_counter()
    metrics = fit_fold(model_cfg, train_cfg, splits, out, fold, resume=False)
    seconds = time.perf_counter() - t0
    # the chosen checkpoint's guide head alone (fit_fold leaves it loaded in eval mode)
    from mmfusion.model.mmfusion import MMFusionModel

    widths = {g: int(a.shape[1]) for g, a in splits["train"].tables.items()}
    model = MMFusionModel(model_cfg, widths)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True)["model"])
    model.eval()
    test = splits["test"]
    with torch.no_grad():
        guide = np.concatenate([torch.sigmoid(model(b).logit).numpy()
                                for b in test.batches(train_cfg.batch_size,
                                                      torch.device("cpu"))])
    truth = pd.read_csv(results / "demo_cohort" / "truth.csv").set_index("patient_id")
    oracle = truth["probability"].reindex(test.patient_ids).to_numpy()
    return {"fold": fold, "mode": mode, "auc": metrics["test"]["auc"],
            "guide_auc": safe_auc(test.labels, guide), "oracle": safe_auc(test.labels, oracle),
            "best_epoch": metrics["best_epoch"], "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[777, 778])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="training runs at once")
    ap.add_argument("--work", type=Path, default=None,
                    help="where cohorts and runs go (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_card_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        cohorts = {s: build_cohort(work, s, max(args.jobs, 1)) for s in args.seeds}
        t1 = time.perf_counter()
        tasks = [(s, f, m) for s, f, m in itertools.product(args.seeds, args.folds, MODES)]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(train_one, *cohorts[s], f, m) for s, f, m in tasks]
            rows = [{"seed": s, **fut.result()} for (s, _, _), fut in zip(tasks, futures,
                                                                          strict=True)]
        t2 = time.perf_counter()
    res = pd.DataFrame(rows)
    wide = res.pivot_table(index=["seed", "fold"], columns="mode",
                           values=["auc", "guide_auc", "oracle", "seconds"])
    print(f"mmfusion, demo config, cohorts {args.seeds} (120 patients), folds {args.folds};"
          f" cohorts built in {t1 - t0:.0f} s, training {t2 - t1:.0f} s ({args.jobs} jobs)")
    print(f"{'seed':>5} {'fold':>4} {'oracle':>7} | {'AUC train':>9} {'AUC card':>9} | "
          f"{'guide train':>11} {'guide card':>10} | {'s train':>7} {'s card':>7}")
    for (seed, fold), r in wide.iterrows():
        print(f"{seed:>5} {fold:>4} {r[('oracle', 'train')]:7.3f} | "
              f"{r[('auc', 'train')]:9.3f} {r[('auc', 'card')]:9.3f} | "
              f"{r[('guide_auc', 'train')]:11.3f} {r[('guide_auc', 'card')]:10.3f} | "
              f"{r[('seconds', 'train')]:7.0f} {r[('seconds', 'card')]:7.0f}")
    res["ratio"] = res["auc"] / res["oracle"]
    res["guide_ratio"] = res["guide_auc"] / res["oracle"]
    for mode in MODES:
        m = res[res["mode"] == mode]
        per_seed = ", ".join(f"{s}: {g['auc'].mean():.3f}" for s, g in m.groupby("seed"))
        print(f"{mode:>5}: mean test AUC {m['auc'].mean():.3f} (per cohort {per_seed}), "
              f"oracle {m['oracle'].mean():.3f}, AUC / oracle {m['ratio'].mean():.3f}; "
              f"guide head {m['guide_auc'].mean():.3f} ({m['guide_ratio'].mean():.3f} x "
              f"oracle); {m['seconds'].mean():.0f} s per fold")


if __name__ == "__main__":
    main()
