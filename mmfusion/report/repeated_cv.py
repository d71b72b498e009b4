"""Repeated cross-validation with several training seeds: spread, variance shares and the
corrected comparison of two variants.

A run with `folds.repeats` = R and `train.seeds` = S trains R x K x S models per variant
(K = `folds.n_folds`): repeat r is a new stratified K-fold split, and every fold is trained
S times with different seeds. Per model the test AUC (or any metric) is a value a[r, k, s].

Variance shares (`variance_components`, nested random effects a = mu + R_r + F_rk + e_rks,
balanced method of moments, each component clipped at 0):

- seed: the pooled within-fold variance over seeds (same split, same patients, other seed);
- fold: variance between the folds of one split beyond seed noise (other test and training
  patients);
- repeat: variance between the splits' K-fold means beyond what fold and seed noise explain.

The split share is fold + repeat (everything that changes with the partition). With S = 1
the seed share cannot be told apart from the fold share (both NaN-marked: the fold
component then holds the seed noise); with R = 1 there is no repeat component.

Paired comparisons (`corrected_resampled_ttest`): Nadeau & Bengio's (2003) corrected
resampled t-test over the J = R x K paired per-fold differences d_j. The J differences are
not independent (their training sets overlap, and each patient is tested once per repeat),
so the naive t-test's variance s²/J is too small and its p-values too small; Nadeau &
Bengio inflate it to (1/J + n_test/n_train) s², with df = J - 1 (Bouckaert & Frank 2004
recommend it for repeated cross-validation). It covers the noise of the split (which
patients train and test) and of training (seeds), approximately; DeLong's test covers only
the test patients' sampling noise given the trained models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

COMPONENT_COLUMNS = ["n_repeats", "n_folds", "n_seeds", "var_seed", "var_fold", "var_repeat",
                     "share_seed", "share_split"]


@dataclass(frozen=True)
class CorrectedTTest:
    """Nadeau & Bengio's corrected resampled t-test of mean(d) == 0 (two-sided)."""

    n: int                 # J, the number of paired differences (repeats x folds)
    mean: float            # mean difference
    sd: float              # sample sd of the differences (ddof 1)
    ratio: float           # n_test / n_train
    se: float              # sqrt((1/J + ratio) sd²)
    t: float
    df: int                # J - 1
    p_value: float
    naive_se: float        # sqrt(sd² / J): the uncorrected paired t-test's


def corrected_resampled_ttest(differences: np.ndarray | list[float], n_train: float,
                              n_test: float) -> CorrectedTTest:
    """Corrected resampled t-test (Nadeau & Bengio 2003) of the paired differences
    `differences` (one per repeat x fold; NaNs dropped). `n_train`, `n_test`: the training
    and test set sizes of one fold (their mean over folds when they vary). Fewer than two
    differences give NaN statistics."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    j = len(d)
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"need positive set sizes, got n_train={n_train}, n_test={n_test}")
    ratio = float(n_test) / float(n_train)
    nan = math.nan
    if j < 2:
        return CorrectedTTest(j, float(d.mean()) if j else nan, nan, ratio, nan, nan,
                              max(j - 1, 0), nan, nan)
    # identical differences: exactly no spread (not the rounding of their mean)
    mean, var = float(d.mean()), (0.0 if np.ptp(d) == 0 else float(d.var(ddof=1)))
    se = math.sqrt((1.0 / j + ratio) * var)
    if se == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / se
    p = float(2.0 * student_t.sf(abs(t), j - 1))
    return CorrectedTTest(j, mean, math.sqrt(var), ratio, se, t, j - 1, p,
                          math.sqrt(var / j))


def _cube(values: pd.DataFrame, column: str) -> np.ndarray:
    """`values` (repeat, fold, seed, column) as an array `(R, K, S)`; needs a balanced
    design (every repeat with the same folds count, every fold with the same seeds)."""
    frame = values.dropna(subset=[column])
    repeats = sorted(frame["repeat"].unique())
    groups = [frame[frame["repeat"] == r] for r in repeats]
    n_folds = {g["fold"].nunique() for g in groups}
    n_seeds = set(frame.groupby(["repeat", "fold"])["seed"].nunique())
    if len(n_folds) != 1 or len(n_seeds) != 1:
        raise ValueError("variance components need a balanced design: the same number of "
                         "folds per repeat and of seeds per fold")
    cube = [[g[g["fold"] == k].sort_values("seed")[column].to_numpy(float)
             for k in sorted(g["fold"].unique())] for g in groups]
    return np.asarray(cube, dtype=float)


def variance_components(values: pd.DataFrame, column: str = "value") -> dict[str, float]:
    """Seed, fold and repeat variance components of `values[column]` (one row per model:
    columns `repeat`, `fold`, `seed`, `column`; `fold` may be the global fold number) and
    the shares of seed and split (fold + repeat) in their sum. NaN where the design cannot
    estimate a component (S = 1: seed; R = 1: repeat; a share needs every component that
    the design has: with S = 1 both shares are NaN)."""
    nan = math.nan
    cube = _cube(values, column) if len(values.dropna(subset=[column])) else np.zeros((0, 0, 0))
    r, k, s = cube.shape if cube.size else (0, 0, 0)
    out = {"n_repeats": float(r), "n_folds": float(k), "n_seeds": float(s),
           "var_seed": nan, "var_fold": nan, "var_repeat": nan,
           "share_seed": nan, "share_split": nan}
    if not cube.size:
        return out
    cells = cube.mean(axis=2)                                          # (R, K)
    var_seed = float(cube.var(axis=2, ddof=1).mean()) if s >= 2 else nan
    between_folds = float(cells.var(axis=1, ddof=1).mean()) if k >= 2 else nan
    seed_part = var_seed / s if s >= 2 else 0.0
    var_fold = max(between_folds - seed_part, 0.0) if k >= 2 else nan
    if r >= 2 and k >= 2:
        between_repeats = float(cells.mean(axis=1).var(ddof=1))
        var_repeat = max(between_repeats - between_folds / k, 0.0)
    else:
        var_repeat = nan
    out.update(var_seed=var_seed, var_fold=var_fold, var_repeat=var_repeat)
    parts = [var_seed, var_fold] + ([var_repeat] if r >= 2 else [])
    total = sum(parts)
    if all(math.isfinite(p) for p in parts) and total > 0:
        out["share_seed"] = var_seed / total
        out["share_split"] = (total - var_seed) / total
    return out


def repeat_means(values: pd.DataFrame, column: str = "value") -> pd.Series:
    """Per repeat: the mean of `column` over its folds (the K-fold estimate one run reports)."""
    return values.dropna(subset=[column]).groupby("repeat")[column].mean()


# ---- tables of the report (build.py): every model's metrics, spread, shares, corrected tests

SPREAD_METRICS = ["auc", "balanced_accuracy", "brier"]
REPEATED_COLUMNS = ["variant", "metric", "n_models", "mean", "sd", "sd_repeat_means",
                    *COMPONENT_COLUMNS]
CORRECTED_COLUMNS = ["nb_n", "nb_mean_difference", "nb_ratio", "nb_t", "nb_df",
                     "nb_p_value", "diff_var_seed", "diff_var_fold", "diff_var_repeat",
                     "diff_share_seed", "diff_share_split"]


def member_metrics(paths: list, repeats: dict[int, int]) -> pd.DataFrame:
    """One row per trained model (variant, fold, repeat, seed, SPREAD_METRICS): a fold's
    own metrics.json (seed 0) or, where it is an ensemble of training seeds (`members`),
    each seed's metrics.json in its folder."""
    import json
    from pathlib import Path

    rows = []
    for path in map(Path, paths):
        data = json.loads(path.read_text())
        fold = int(path.parent.name.removeprefix("fold"))
        members = data.get("members")
        sources = ([(i, json.loads((path.parent / m["dir"] / "metrics.json").read_text()))
                    for i, m in enumerate(members)] if members else [(0, data)])
        for seed, record in sources:
            test = record.get("test", {})
            rows.append({"variant": path.parent.parent.name, "fold": fold,
                         "repeat": repeats.get(fold, 0), "seed": seed,
                         **{m: _num(test.get(m)) for m in SPREAD_METRICS}})
    return pd.DataFrame(rows, columns=["variant", "fold", "repeat", "seed", *SPREAD_METRICS])


def _num(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def repeated_cv_table(fold_metrics: pd.DataFrame, models: pd.DataFrame,
                      order: list[str]) -> pd.DataFrame:
    """repeated_cv.csv: per variant and metric, the mean and sd over repeats x folds of the
    folds' own values (seed ensembles where train.seeds > 1), the sd of the repeats'
    K-fold means, and the seed / fold / repeat variance components of single models."""
    rows = []
    for variant in order:
        folds = fold_metrics[fold_metrics["variant"].astype(str) == variant]
        mine = models[models["variant"] == variant]
        for metric in SPREAD_METRICS:
            values = folds[metric].astype(float).dropna()
            means = repeat_means(folds.rename(columns={metric: "value"}))
            rows.append({"variant": variant, "metric": metric, "n_models": len(mine),
                         "mean": float(values.mean()) if len(values) else math.nan,
                         "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                         "sd_repeat_means": (float(means.std(ddof=1)) if len(means) > 1
                                             else math.nan),
                         **variance_components(mine.rename(columns={metric: "value"}))})
    return pd.DataFrame(rows, columns=REPEATED_COLUMNS)


def corrected_tests(fold_metrics: pd.DataFrame, models: pd.DataFrame, reference: str,
                    others: list[str], n_train: float, n_test: float) -> pd.DataFrame:
    """Per other variant: Nadeau & Bengio's corrected resampled t-test of the per-fold AUC
    differences reference - other over every repeat x fold, and the variance components
    of the single models' paired AUC differences (same repeat, fold and seed number)."""
    wide = fold_metrics.pivot_table(index="fold", columns="variant", values="auc",
                                    aggfunc="first", observed=True)
    wide.columns = [str(c) for c in wide.columns]
    per_model = models.pivot_table(index=["repeat", "fold", "seed"], columns="variant",
                                   values="auc", aggfunc="first")
    rows = []
    for other in others:
        if reference not in wide or other not in wide:
            continue
        res = corrected_resampled_ttest((wide[reference] - wide[other]).to_numpy(float),
                                        n_train, n_test)
        diff = (per_model[reference] - per_model[other]).rename("value").reset_index()
        comps = variance_components(diff)
        rows.append({"reference": reference, "other": other, "nb_n": res.n,
                     "nb_mean_difference": res.mean, "nb_ratio": res.ratio, "nb_t": res.t,
                     "nb_df": res.df, "nb_p_value": res.p_value,
                     **{f"diff_{k}": comps[k] for k in ("var_seed", "var_fold", "var_repeat",
                                                        "share_seed", "share_split")}})
    return pd.DataFrame(rows, columns=["reference", "other", *CORRECTED_COLUMNS])
