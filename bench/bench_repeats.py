"""Repeated, multi-seed comparison on one synthetic cohort, through the real workflow.

How much of the differences between variants is noise of the training seed and of the
split? This runs the demo config on one generated cohort with `folds.repeats` = R and
`train.seeds` = S given on Snakemake's command line exactly as a user would
(`--config 'folds={repeats: R}' 'train={seeds: S}'`), up to the report, and turns the
report's `repeated_cv.csv` and `paired_tests.csv` into one table (`{out}/summary.md`,
`summary.csv`): per variant the AUC mean ± sd over repeats x folds, the sd of the repeats'
K-fold means and the seed and split shares of a single model's AUC variance; per pair
(reference vs other) the mean AUC difference, Nadeau & Bengio's corrected p over every
repeat x fold, the naive paired t-test p over repeat 0's folds, DeLong's p (repeat 0) and
the seed share of the difference's variance.

Cost: R x S times the training of one run. On 2 cores the defaults (60 patients, 20 epochs,
base1 + mmfusion + logreg, R = 2, S = 2: 4 models per fold and variant) take about 20-30
minutes; `--n-patients 24 --epochs 3` is a smoke test. Snakemake resumes an interrupted run.

    python bench/bench_repeats.py [--repeats 2] [--seeds 2] [--n-patients 60] [--epochs 20]
        [--variants base1 mmfusion logreg] [--cores 2] [--out bench_results/repeats]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmfusion.io import atomic_path, write_text_atomic  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="folds.repeats (R)")
    p.add_argument("--seeds", type=int, default=2, help="train.seeds (S)")
    p.add_argument("--n-patients", type=int, default=60, help="synthetic cohort size")
    p.add_argument("--synth-seed", type=int, default=20240601, help="synth.seed")
    p.add_argument("--epochs", type=int, default=20, help="train.epochs (demo: 40)")
    p.add_argument("--variants", nargs="+", default=["base1", "mmfusion", "logreg"])
    p.add_argument("--reference", default="mmfusion", help="variant the others are paired with")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=REPO / "bench_results" / "repeats")
    return p.parse_args(argv)


def write_config(args: argparse.Namespace) -> Path:
    """The demo config with this cohort size, epochs and variants (R and S come on the
    command line); results under `{out}/results`."""
    config: dict[str, Any] = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str((args.out / "results").resolve())
    config["synth"].update(n_patients=args.n_patients, seed=args.synth_seed)
    epochs = args.epochs
    train = config["train"]
    scale = epochs / train["epochs"]
    train.update(epochs=epochs,
                 warmup_epochs=max(1, round(train["warmup_epochs"] * scale)),
                 restart_epoch=max(1, round(train["restart_epoch"] * scale)),
                 select_from=min(epochs - 1, round(train["select_from"] * scale)))
    config["model"]["variants"] = list(args.variants)
    path = args.out / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path


def run_workflow(args: argparse.Namespace, config: Path) -> float:
    """Snakemake up to the report, with R and S as a user gives them; returns seconds."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bindir / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(args.out), "--cores", str(args.cores),
           "--configfile", str(config),
           "--config", f"folds={{repeats: {args.repeats}}}", f"train={{seeds: {args.seeds}}}",
           "--rerun-incomplete", "--nolock"]
    start = time.monotonic()
    with open(args.out / "snakemake.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    return time.monotonic() - start


def _fmt(value: object, spec: str = ".3f") -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return "–" if v != v else format(v, spec)


def summarise(args: argparse.Namespace, seconds: float | None) -> str:
    """summary.csv and summary.md from the report's repeated_cv.csv and paired_tests.csv."""
    report = args.out / "results" / "report"
    repeated = pd.read_csv(report / "repeated_cv.csv")
    tests = pd.read_csv(report / "paired_tests.csv")
    auc = repeated[repeated["metric"] == "auc"].reset_index(drop=True)
    with atomic_path(args.out / "summary.csv") as tmp:
        auc.merge(tests.rename(columns={"other": "variant"}), on="variant", how="left") \
            .to_csv(tmp, index=False, float_format="%.6g")
    first = auc.iloc[0]
    lines = [f"One synthetic cohort of {args.n_patients} patients (synth seed "
             f"{args.synth_seed}), {int(first['n_repeats'])} repeats of "
             f"{int(first['n_folds'])}-fold cross-validation x {int(first['n_seeds'])} "
             f"training seeds, {args.epochs} epochs, `python bench/bench_repeats.py`"
             + (f" ({seconds / 60:.0f} min on {args.cores} cores)." if seconds else "."),
             "", "| variant | models | AUC mean ± sd (repeats × folds) | sd of repeat means "
             "| sd over seeds | seed share | split share |",
             "|---|---|---|---|---|---|---|"]
    for _, x in auc.iterrows():
        sd_seed = float(x["var_seed"]) ** 0.5 if x["var_seed"] == x["var_seed"] else None
        lines.append(f"| {x['variant']} | {int(x['n_models'])} | {_fmt(x['mean'])} ± "
                     f"{_fmt(x['sd'])} | {_fmt(x['sd_repeat_means'])} | {_fmt(sd_seed)} | "
                     f"{_fmt(x['share_seed'], '.0%')} | {_fmt(x['share_split'], '.0%')} |")
    lines += ["", f"| {args.reference} vs | mean Δ AUC | corrected p (J = repeats × folds) "
              "| t-test p (repeat 0) | DeLong p (repeat 0) | Δ variance: seed share "
              "| Δ variance: split share |", "|---|---|---|---|---|---|---|"]
    for _, x in tests.iterrows():
        lines.append(f"| {x['other']} | {_fmt(x['nb_mean_difference'], '+.3f')} | "
                     f"{_fmt(x['nb_p_value'], '.3g')} | {_fmt(x.get('ttest_p_value'), '.3g')} "
                     f"| {_fmt(x['p_value'], '.3g')} | {_fmt(x['diff_share_seed'], '.0%')} | "
                     f"{_fmt(x['diff_share_split'], '.0%')} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(args.out / "summary.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    config = write_config(args)
    seconds = run_workflow(args, config)
    print(summarise(args, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
