"""Monte Carlo error of a diffusion score against the number of reverse-process samples.

A diffusion variant's probability of a patient is a mean over S reverse-process samples:
an estimate of the posterior mean, with a sampling (Monte Carlo) error of its own. For
every fold model of a trained run (`results/models/{variant}/fold{k}`), this scores the
fold's validation and test patients under R independent noise draws
(`mmfusion.train.scoring`'s common random numbers, seeds from `replicate_seeds`) at each S,
maps them with the fold's recalibration, and reports per S the sd over draws of each
patient's probability (mean, 95th percentile, maximum over patients), raw and
recalibrated, for the scheme's antithetic pairs (draws ε and -ε, `CFD.draw_noise`) and,
with `--iid`, for S independent samples, the plain estimator of the same posterior mean.
The guide (backbones, MMRL, HGA) runs once per patient; only the diffusion head reruns.

    python bench/bench_monte_carlo.py --results results --samples 10 25 50 100 200 \
        --replicates 20 --iid --out bench_results/monte_carlo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmfusion.train.fold import load_fold  # noqa: E402
from mmfusion.train.recalibration import Recalibrator  # noqa: E402
from mmfusion.train.scoring import monte_carlo_summary, replicate_seeds  # noqa: E402
from mmfusion.train.trained_fold import build_model, load_fold_model  # noqa: E402


def _guide(model, split, batch_size: int, device: torch.device):
    """HGA features and ŷ of every patient of `split` (eval mode), once."""
    feats, y_hats = [], []
    with torch.no_grad():
        for batch in split.batches(batch_size, device):
            out = model(batch)
            feats.append(out.features)
            y_hats.append(model.guide_probabilities(out.logit))
    return torch.cat(feats), torch.cat(y_hats)


def _noise(cfd, n_samples: int, seed: int, antithetic: bool) -> torch.Tensor:
    """The scheme's draws (`CFD.draw_noise`: antithetic pairs), or S independent ones."""
    gen = torch.Generator().manual_seed(seed)
    if antithetic:
        return cfd.draw_noise(n_samples, gen)
    return torch.randn((cfd.timesteps, n_samples, cfd.y_dim), generator=gen)


def measure(results: Path, variant: str, samples: list[int], replicates: int,
            iid: bool, device: torch.device) -> pd.DataFrame:
    """One row per fold x split x S x estimator: the Monte Carlo sd summary."""
    config = results / "config.resolved.yaml"
    import yaml

    cfg = yaml.safe_load(config.read_text())
    rows = []
    for fold in range(int(cfg["folds"]["n_folds"])):
        folder = results / "models" / variant / f"fold{fold}"
        fold_model = load_fold_model(folder, variant, fold)
        model = build_model(fold_model, device)
        recal = Recalibrator.from_dict(fold_model.scoring.get("recalibration"))
        splits = load_fold(results / "cohort" / "table.tsv",
                           results / "cohort" / "feature_spec.json",
                           results / "cohort" / "folds.tsv", results / "cache" / "patches",
                           fold, cfg["preprocess"])
        for name in ("val", "test"):
            features, y_hat = _guide(model, splits[name], fold_model.batch_size, device)
            for s in samples:
                for anti in ([True, False] if iid else [True]):
                    draws = []
                    for seed in replicate_seeds(fold_model.seed, replicates):
                        noise = _noise(model.cfd, s, seed, anti)
                        with torch.no_grad():
                            y0 = model.cfd.sample(features, y_hat, s, noise=noise)
                        draws.append(model.cfd.sample_probabilities(y0).mean(dim=1)
                                     .double().cpu().numpy())
                    raw = np.stack(draws)  # (R, N)
                    for scale, values in (("raw", raw), ("recalibrated", recal.apply(raw))):
                        summary = monte_carlo_summary(values.std(axis=0, ddof=1))
                        rows.append({"variant": variant, "fold": fold, "split": name,
                                     "n_samples": s, "estimator": "antithetic" if anti
                                     else "iid", "scale": scale,
                                     "n_patients": raw.shape[1], **summary})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--variant", default="mmfusion")
    parser.add_argument("--samples", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--iid", action="store_true",
                        help="also measure S independent samples (no antithetic pairs)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_results/monte_carlo"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = measure(args.results, args.variant, args.samples, args.replicates,
                    args.iid, torch.device("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "monte_carlo.csv", index=False, float_format="%.6g")
    overall = (table.groupby(["scale", "estimator", "n_samples"])
               .agg(sd_mean=("sd_mean", "mean"), sd_p95=("sd_p95", "max"),
                    sd_max=("sd_max", "max")).reset_index())
    (args.out / "summary.json").write_text(json.dumps(
        {"results": str(args.results), "variant": args.variant,
         "replicates": args.replicates,
         "rows": overall.to_dict(orient="records")}, indent=1) + "\n")
    with pd.option_context("display.width", 200):
        print(overall.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
