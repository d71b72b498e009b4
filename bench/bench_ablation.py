"""Ablation benchmark: every variant on K synthetic cohorts, through the real workflow.

One demo cohort is too noisy to rank variants (README: numerically equivalent code moved
mean AUCs by 0.045; other cohorts gave MMFusion 0.77-0.90). This runs the demo config on K
cohorts drawn with different `synth.seed`s and summarises over cohorts. For each seed it
writes a config (the demo config + that seed + the variants + a results folder under
`{out}/seed{S}/`) and runs `snakemake` on the repository's Snakefile up to the report, so
every number comes from exactly the pipeline users run (same folds, preprocessing,
checkpoint and threshold choice). `mmfusion_maskedct` is mmfusion on the paper's masked CT
(`crop.apply_mask: true`): a second run per seed in `{out}/seed{S}/maskedct/` on the same
cohort (same seed: byte-identical cohort and folds), its mmfusion scores renamed.

Per cohort, a variant's score is its mean test AUC over the folds (`report/
metrics_summary.csv`) and its ratio to the oracle AUC (true probabilities of the label
model, `report/oracle_auc.csv`) on the same test folds. Over cohorts: mean and 95 %
t-interval, and the paired difference to mmfusion (variant - mmfusion; paired t-test over
cohorts; also over cohort x fold pairs, indicative only: folds of one cohort share
training patients, so they are not independent). Writes `{out}/summary.csv`, `summary.md`
(a Markdown table for the README), `ablation.png` (mean and CI per variant, one dot per
cohort), `cohorts.csv` and `folds.csv`, refreshed after every seed.

Cost: the demo (6 variants x 3 folds, 120 patients) takes about 8 min on 2 cores; the 3
Table 3 ablations cost about what mmfusion does (+4-5 min) and the masked-CT run repeats
the preprocessing and trains one variant (+4 min): about 15-20 min per cohort on 2 cores,
so the default 5 cohorts x 10 variants take about 1.5 h (up to 2 h on a busy machine).
Interrupted runs resume: Snakemake keeps what each seed finished, `--resume` skips the
seeds already summarised.

    python bench/bench_ablation.py [--seeds 5] [--first-seed 1001] [--cores 2]
        [--variants mmfusion base1 ...] [--resume] [--out bench_results/ablation]
    # smoke test: one 24-patient cohort, two cheap variants, 3 epochs (about 3 min on a
    # shared 2-core machine; with mmfusion_maskedct about 5.5 min)
    python bench/bench_ablation.py --seeds 1 --n-patients 24 --epochs 3 \\
        --variants logreg base1 --out /tmp/ablation_smoke
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmfusion.io import atomic_path, write_text_atomic  # noqa: E402
from mmfusion.model.variants import BASELINES, VARIANTS  # noqa: E402

REFERENCE = "mmfusion"
MASKED_CT = "mmfusion_maskedct"  # mmfusion with crop.apply_mask: true (a second run)
ALL_VARIANTS = [*VARIANTS, *BASELINES, MASKED_CT]
LEVEL = 0.95
SEED_SUMMARY = "seed_summary.csv"
FOLD_COLUMNS = ["seed", "variant", "fold", "auc", "oracle_auc"]


# ---------------------------------------------------------------- statistics (pure)

def t_interval(values: Any, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of `values` (NaNs dropped) and the two-sided Student-t confidence interval of
    the mean, `mean -+ t_{(1+level)/2, n-1} * sd / sqrt(n)`; NaN bounds below 2 values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def paired_difference(a: Any, b: Any, level: float = LEVEL) -> dict[str, float]:
    """Paired difference `a - b` (pairs with a NaN dropped): n, mean, t-interval of the
    mean, and the two-sided paired t-test (the statistic and p of scipy's `ttest_rel`;
    identical differences give p 0, or NaN when they are all zero)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    mean, low, high = t_interval(d, level)
    t = p = math.nan
    if d.size >= 2:
        sd = float(d.std(ddof=1))
        if sd > 0:
            t = mean / (sd / math.sqrt(d.size))
            p = float(2 * stats.t.sf(abs(t), d.size - 1))
        elif mean != 0:
            t, p = math.copysign(math.inf, mean), 0.0
    return {"n": int(d.size), "mean": mean, "ci_low": low, "ci_high": high, "t": t,
            "p_value": p}


def cohort_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, variant): mean test AUC over folds, mean oracle AUC over the same folds,
    and their ratio. `folds` has FOLD_COLUMNS."""
    out = (folds.groupby(["seed", "variant"], sort=False)
           .agg(n_folds=("fold", "nunique"), auc=("auc", "mean"),
                oracle_auc=("oracle_auc", "mean"))
           .reset_index())
    out["auc_over_oracle"] = out["auc"] / out["oracle_auc"]
    return out


def summarise(folds: pd.DataFrame, reference: str = REFERENCE,
              level: float = LEVEL) -> pd.DataFrame:
    """One row per variant (in the order they first appear) and one for the oracle: over
    cohorts, mean and t-interval of the AUC and of AUC / oracle AUC; paired difference to
    `reference` (variant - reference) over cohorts (`diff_*`, `p_cohorts`) and over
    cohort x fold pairs (`diff_folds`, `p_folds`, indicative: folds are not independent).
    """
    cohorts = cohort_table(folds)
    by_seed = cohorts.pivot(index="seed", columns="variant", values="auc")
    by_fold = folds.pivot_table(index=["seed", "fold"], columns="variant", values="auc")
    rows = []
    for variant in list(dict.fromkeys(folds["variant"])):
        c = cohorts[cohorts["variant"] == variant]
        auc, ratio = t_interval(c["auc"], level), t_interval(c["auc_over_oracle"], level)
        row: dict[str, Any] = {
            "variant": variant, "n_cohorts": len(c),
            "auc_mean": auc[0], "auc_ci_low": auc[1], "auc_ci_high": auc[2],
            "ratio_mean": ratio[0], "ratio_ci_low": ratio[1], "ratio_ci_high": ratio[2]}
        diff = fold_diff = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                            "p_value": math.nan, "n": 0}
        if reference in by_seed and variant != reference:
            diff = paired_difference(by_seed[variant], by_seed[reference], level)
            fold_diff = paired_difference(by_fold[variant], by_fold[reference], level)
        row.update({"diff_mean": diff["mean"], "diff_ci_low": diff["ci_low"],
                    "diff_ci_high": diff["ci_high"], "p_cohorts": diff["p_value"],
                    "n_fold_pairs": fold_diff["n"], "diff_folds": fold_diff["mean"],
                    "p_folds": fold_diff["p_value"]})
        rows.append(row)
    oracle = cohorts.drop_duplicates("seed")["oracle_auc"]
    o = t_interval(oracle, level)
    rows.append({"variant": "oracle", "n_cohorts": int(oracle.notna().sum()),
                 "auc_mean": o[0], "auc_ci_low": o[1], "auc_ci_high": o[2],
                 "ratio_mean": 1.0, "ratio_ci_low": math.nan, "ratio_ci_high": math.nan})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- output

def _ci(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _diff(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:+.3f}" if math.isnan(low) else f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def _p(p: float) -> str:
    return "" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def summary_markdown(summary: pd.DataFrame, seeds: list[int], n_patients: int,
                     n_folds: int) -> str:
    """The README-ready table of `summarise`'s output."""
    consecutive = len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1))
    span = f"{seeds[0]}-{seeds[-1]}" if consecutive else ", ".join(map(str, seeds))
    plural = "s" if len(seeds) != 1 else ""
    lines = [
        f"{len(seeds)} synthetic cohort{plural} of {n_patients} patients (synth seed{plural} "
        f"{span}), {n_folds} folds each, `python bench/bench_ablation.py`. Per cohort the "
        f"mean test AUC over folds; mean over cohorts with 95 % t-interval. Δ = variant − "
        f"{REFERENCE}, paired over cohorts (paired t-test p) and over cohort × fold pairs "
        f"(p (folds): indicative, folds of one cohort share training patients).",
        "",
        f"| variant | AUC [95 % CI] | AUC / oracle [95 % CI] | Δ AUC vs {REFERENCE} [95 % CI] "
        "| p (cohorts) | p (folds) |",
        "|---|---|---|---|---|---|",
    ]
    if REFERENCE not in set(summary["variant"]):
        lines[0] += f" No {REFERENCE} in this run: no differences."
    for r in summary.itertuples():
        name = f"**{r.variant}**" if r.variant == REFERENCE else r.variant
        ratio = "1" if r.variant == "oracle" else _ci(r.ratio_mean, r.ratio_ci_low,
                                                       r.ratio_ci_high)
        lines.append(
            f"| {name} | {_ci(r.auc_mean, r.auc_ci_low, r.auc_ci_high)} | {ratio} | "
            f"{_diff(r.diff_mean, r.diff_ci_low, r.diff_ci_high)} | {_p(r.p_cohorts)} "
            f"| {_p(r.p_folds)} |")
    return "\n".join(lines) + "\n"


def plot_summary(cohorts: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    """Two panels (AUC, AUC / oracle): one dot per cohort, mean and 95 % CI per variant."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    variants = [v for v in summary["variant"] if v != "oracle"]
    oracle = cohorts.drop_duplicates("seed")[["seed", "oracle_auc"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.3 * len(variants) + 2), 4.2))
    rng = np.random.default_rng(0)
    panels = (("auc", "test AUC (mean over folds)", [*variants, "oracle"]),
              ("auc_over_oracle", "AUC / oracle AUC", variants))
    for ax, (column, label, names) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            values = (oracle["oracle_auc"] if name == "oracle" else
                      cohorts.loc[cohorts["variant"] == name, column]).to_numpy(float)
            ax.scatter(i - 0.12 + rng.uniform(-0.08, 0.08, len(values)), values, s=14,
                       color="#7f7f7f", zorder=2)
            row = summary[summary["variant"] == name].iloc[0]
            key = "auc" if column == "auc" else "ratio"
            mean, low, high = (row[f"{key}_mean"], row[f"{key}_ci_low"],
                               row[f"{key}_ci_high"])
            err = None if math.isnan(low) else [[mean - low], [high - mean]]
            colour = {REFERENCE: "#d62728", "oracle": "#ff7f0e"}.get(name, "#1f77b4")
            ax.errorbar(i + 0.12, mean, yerr=err, fmt="o", color=colour, capsize=4, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right",
                      rotation_mode="anchor", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", lw=0.5, alpha=0.5)
    axes[1].axhline(0.9, color="grey", lw=0.8, ls="--", label="0.9 x oracle")
    axes[1].legend(fontsize=7, loc="best")
    k = cohorts["seed"].nunique()
    fig.suptitle(f"{k} synthetic cohort{'s' if k != 1 else ''}: grey dots = cohorts, "
                 f"markers = mean with 95 % t-interval", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


def write_outputs(folds: pd.DataFrame, out: Path, seeds: list[int], n_patients: int,
                  n_folds: int) -> pd.DataFrame:
    """summary.csv, summary.md, ablation.png, cohorts.csv and folds.csv under `out`."""
    summary = summarise(folds)
    cohorts = cohort_table(folds)
    _csv(folds, out / "folds.csv")
    _csv(cohorts, out / "cohorts.csv")
    _csv(summary, out / "summary.csv")
    write_text_atomic(out / "summary.md", summary_markdown(summary, seeds, n_patients,
                                                           n_folds))
    plot_summary(cohorts, summary, out / "ablation.png")
    return summary


# ---------------------------------------------------------------- workflow runs

def seed_config(base: dict[str, Any], seed: int, variants: list[str], results: Path,
                n_patients: int | None = None, epochs: int | None = None,
                apply_mask: bool = False) -> dict[str, Any]:
    """The demo config for one cohort: synth seed, variants, results folder; optionally a
    smaller cohort and fewer epochs (warm-up, restart and checkpoint window scaled alike)."""
    config = copy.deepcopy(base)
    config["results"] = str(results)
    config.setdefault("cohort", {})["synthetic"] = True
    config.setdefault("synth", {})["seed"] = int(seed)
    if n_patients:
        config["synth"]["n_patients"] = int(n_patients)
    train = config.setdefault("train", {})
    if epochs and epochs != train.get("epochs"):
        scale = epochs / int(train.get("epochs", epochs))
        for key in ("warmup_epochs", "restart_epoch", "select_from"):
            if key in train:
                train[key] = max(0 if key == "select_from" else 1,
                                 min(epochs, round(int(train[key]) * scale)))
        train["epochs"] = int(epochs)
    config.setdefault("model", {})["variants"] = list(variants)
    if apply_mask:
        config.setdefault("crop", {})["apply_mask"] = True
    return config


def _snakemake() -> str:
    local = Path(sys.executable).parent / "snakemake"
    found = str(local) if local.is_file() else shutil.which("snakemake")
    if not found:
        raise SystemExit("snakemake not found: run with the venv's python (.venv/bin/python)")
    return found


def run_workflow(config: dict[str, Any], folder: Path, cores: int) -> None:
    """Write `folder/config.yaml` and run the workflow up to the report in `folder`
    (its own .snakemake, log in `folder/snakemake.log`). Already-built outputs are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    write_text_atomic(config_file, yaml.safe_dump(config, sort_keys=False))
    target = Path(config["results"]) / "report" / "metrics_summary.csv"
    snakemake = _snakemake()
    # the venv's bin first on PATH, so the rules' `python` is the venv's (as `make demo`)
    path = f"{Path(snakemake).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path}
    cmd = [snakemake, "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
           "--cores", str(cores), "--configfile", str(config_file), "--rerun-incomplete",
           str(target)]
    log = folder / "snakemake.log"
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              cwd=folder).returncode
    if code:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        hint = ("\n(a killed run leaves a lock: `snakemake --directory "
                f"{folder} --configfile {config_file} --unlock`)" if "locked" in tail else "")
        raise RuntimeError(f"snakemake failed (exit {code}), log {log}:\n{tail}{hint}")


def read_run(results: Path, seed: int, rename: dict[str, str] | None = None) -> pd.DataFrame:
    """FOLD_COLUMNS rows of one run's report (metrics_summary.csv + oracle_auc.csv)."""
    report = results / "report"
    metrics = pd.read_csv(report / "metrics_summary.csv")[["variant", "fold", "auc"]]
    oracle = (pd.read_csv(report / "oracle_auc.csv")[["fold", "auc"]]
              .rename(columns={"auc": "oracle_auc"}))
    rows = metrics.merge(oracle, on="fold", how="left")
    rows["variant"] = rows["variant"].astype(str).replace(rename or {})
    rows.insert(0, "seed", int(seed))
    return rows[FOLD_COLUMNS]


def run_seed(base: dict[str, Any], seed: int, variants: list[str], out: Path, cores: int,
             n_patients: int | None, epochs: int | None) -> pd.DataFrame:
    """Both runs of one cohort (the variants; mmfusion on masked CT when asked); writes
    and returns `{out}/seed{S}/seed_summary.csv`."""
    folder = out / f"seed{seed}"
    plain = [v for v in variants if v != MASKED_CT]
    frames = []
    if plain:
        start = time.monotonic()
        print(f"    workflow: {' '.join(plain)} ...", flush=True)
        run_workflow(seed_config(base, seed, plain, folder / "results", n_patients, epochs),
                     folder, cores)
        print(f"    done in {_minutes(time.monotonic() - start)}", flush=True)
        frames.append(read_run(folder / "results", seed))
    if MASKED_CT in variants:
        start = time.monotonic()
        print(f"    workflow: {REFERENCE} on masked CT (crop.apply_mask) ...", flush=True)
        masked = folder / "maskedct"
        run_workflow(seed_config(base, seed, [REFERENCE], masked / "results", n_patients,
                                 epochs, apply_mask=True), masked, cores)
        print(f"    done in {_minutes(time.monotonic() - start)}", flush=True)
        rows = read_run(masked / "results", seed, {REFERENCE: MASKED_CT})
        if frames:  # same seed, same cohort and folds: the oracle must agree
            check = frames[0].drop_duplicates("fold").set_index("fold")["oracle_auc"]
            again = rows.drop_duplicates("fold").set_index("fold")["oracle_auc"]
            if not np.allclose(check.reindex(again.index), again, equal_nan=True):
                raise RuntimeError(f"seed {seed}: the masked-CT run's oracle AUCs differ "
                                   f"from the main run's: not the same cohort and folds")
        frames.append(rows)
    folds = pd.concat(frames, ignore_index=True)
    _csv(folds, folder / SEED_SUMMARY)
    return folds


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _done(path: Path, variants: list[str]) -> pd.DataFrame | None:
    """A seed summary holding every requested variant, else None."""
    if not path.is_file():
        return None
    folds = pd.read_csv(path)
    return folds if set(variants) <= set(folds["variant"]) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="number of cohorts (default 5)")
    ap.add_argument("--first-seed", type=int, default=1001,
                    help="synth seed of the first cohort; the others follow (default 1001)")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    ap.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=ALL_VARIANTS,
                    metavar="VARIANT", help=f"default: all of {', '.join(ALL_VARIANTS)}")
    ap.add_argument("--resume", action="store_true",
                    help="skip seeds whose seed_summary.csv holds every requested variant")
    ap.add_argument("--out", type=Path, default=REPO / "bench_results" / "ablation")
    ap.add_argument("--config", type=Path, default=REPO / "config.yaml",
                    help="base config (default: the demo's config.yaml)")
    ap.add_argument("--n-patients", type=int, help="cohort size (default: the config's)")
    ap.add_argument("--epochs", type=int, help="epochs (default: the config's)")
    args = ap.parse_args(argv)

    base = yaml.safe_load(args.config.read_text())
    out = args.out.resolve()
    seeds = [args.first_seed + i for i in range(args.seeds)]
    variants = list(dict.fromkeys(args.variants))
    n_patients = args.n_patients or int(base.get("synth", {}).get("n_patients", 60))
    n_folds = int(base.get("folds", {}).get("n_folds", 3))
    print(f"ablation: {len(seeds)} cohort(s) x {len(variants)} variants ({' '.join(variants)}),"
          f" {n_patients} patients, {args.cores} cores -> {out}", flush=True)
    start = time.monotonic()
    frames, summarised, failed = [], [], []
    for i, seed in enumerate(seeds, start=1):
        t0 = time.monotonic()
        print(f"[{i}/{len(seeds)}] seed {seed}", flush=True)
        done = _done(out / f"seed{seed}" / SEED_SUMMARY, variants) if args.resume else None
        if done is not None:
            print("    summarised before: skipped (--resume)", flush=True)
            folds = done
        else:
            try:
                folds = run_seed(base, seed, variants, out, args.cores, args.n_patients,
                                 args.epochs)
            except RuntimeError as err:
                print(f"    FAILED: {err}", flush=True)
                failed.append(seed)
                continue
        frames.append(folds[folds["variant"].isin(variants)])
        summarised.append(seed)
        write_outputs(pd.concat(frames, ignore_index=True), out, summarised, n_patients,
                      n_folds)
        print(f"    seed {seed}: {_minutes(time.monotonic() - t0)}, elapsed "
              f"{_minutes(time.monotonic() - start)}; summary updated", flush=True)
    if frames:
        print()
        print((out / "summary.md").read_text())
        print(f"written: {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'ablation.png'}")
    if failed:
        print(f"seeds failed: {failed} (rerun with --resume)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
