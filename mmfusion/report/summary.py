"""Collect every variant's per-fold test metrics and predictions into comparison tables.

Inputs follow the results contract (DESIGN §4): `models/{variant}/fold{k}/metrics.json`
(its `test` block, scored once) and `predictions.csv`. Nothing here selects anything: the
report only summarises what the folds already decided on their validation splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from mmfusion.errors import MMFusionError
from mmfusion.model.variants import BASELINES, VARIANTS
from mmfusion.report.delong import stratified_delong_test

METRIC_COLUMNS = ["auc", "accuracy", "precision", "recall", "f1", "brier",
                  "balanced_accuracy", "specificity"]
SELECTION_COLUMNS = ["threshold", "best_epoch", "temperature"]
# Monte Carlo error of a diffusion variant's test scores (metrics.json `monte_carlo`,
# recalibrated probabilities; NaN for variants without diffusion): appended last
MONTE_CARLO_COLUMNS = ["mc_n_samples", "mc_sd_mean", "mc_sd_p95", "mc_sd_max"]
# Paper Table 2 order; anything else follows alphabetically.
VARIANT_ORDER = [*VARIANTS, *BASELINES]


def _order(variants: list[str]) -> list[str]:
    known = [v for v in VARIANT_ORDER if v in variants]
    return known + sorted(set(variants) - set(known))


def find_outputs(models_dir: str | Path, name: str) -> list[Path]:
    """Every `models_dir/{variant}/fold{k}/name`."""
    return sorted(Path(models_dir).glob(f"*/fold*/{name}"))


def collect_metrics(paths: list[str | Path]) -> pd.DataFrame:
    """One row per (variant, fold) with the test metrics and what was chosen on validation
    (`threshold`, `best_epoch`, `temperature`): the first columns of metrics_summary.csv;
    and the Monte Carlo error of its test scores (`MONTE_CARLO_COLUMNS`, appended last).

    Each path is `.../{variant}/fold{k}/metrics.json`.
    """
    rows = []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise MMFusionError(f"unreadable metrics: {err}", path=str(path)) from err
        test = data.get("test", {})
        row = {"variant": path.parent.parent.name,
               "fold": int(path.parent.name.removeprefix("fold")), "n": test.get("n")}
        row.update({k: test.get(k) for k in METRIC_COLUMNS})
        row["auc_ci_low"], row["auc_ci_high"] = test.get("auc_ci_low"), test.get("auc_ci_high")
        for key in SELECTION_COLUMNS:  # chosen on validation (baselines: no epoch/temperature)
            value = data.get(key, test.get(key))
            row[key] = float("nan") if value is None else float(value)
        mc = data.get("monte_carlo") or {}
        row["mc_n_samples"] = float(mc.get("n_samples", "nan"))
        for key in ("sd_mean", "sd_p95", "sd_max"):
            value = (mc.get("test") or {}).get(key)
            row[f"mc_{key}"] = float("nan") if value is None else float(value)
        rows.append(row)
    if not rows:
        raise MMFusionError("no metrics.json given", fix="run the training rules first")
    table = pd.DataFrame(rows)
    table["variant"] = pd.Categorical(table["variant"], _order(list(table["variant"].unique())),
                                      ordered=True)
    return table.sort_values(["variant", "fold"]).reset_index(drop=True)


def collect_predictions(paths: list[str | Path]) -> pd.DataFrame:
    """All out-of-fold test predictions (patient_id, fold, variant, probability, ..., label)."""
    frames = [pd.read_csv(p) for p in paths]
    if not frames:
        raise MMFusionError("no predictions.csv given", fix="run the training rules first")
    return pd.concat(frames, ignore_index=True)


def variant_table(metrics: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Mean ± sd over folds of every metric (`columns`, default METRIC_COLUMNS), one row per
    variant (paper Table 2 shape)."""
    columns = METRIC_COLUMNS if columns is None else columns
    grouped = metrics.groupby("variant", observed=True)[columns]
    mean, sd = grouped.mean(), grouped.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    out["n_folds"] = metrics.groupby("variant", observed=True)["fold"].nunique()
    for col in columns:
        out[f"{col}_mean"] = mean[col]
        out[f"{col}_sd"] = sd[col]
    return out.reset_index()


def monte_carlo_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per diffusion variant: samples per patient and the Monte Carlo sd of its recalibrated
    test probabilities over folds (mean of the folds' means, largest 95th percentile and
    maximum); empty when no variant measured it."""
    have = metrics.dropna(subset=["mc_sd_mean"]) if "mc_sd_mean" in metrics else metrics[:0]
    if not len(have):
        return pd.DataFrame(columns=["variant", "n_samples", "sd_mean", "sd_p95", "sd_max"])
    grouped = have.groupby("variant", observed=True)
    return pd.DataFrame({"n_samples": grouped["mc_n_samples"].max(),
                         "sd_mean": grouped["mc_sd_mean"].mean(),
                         "sd_p95": grouped["mc_sd_p95"].max(),
                         "sd_max": grouped["mc_sd_max"].max()}).reset_index()


def pooled_auc(predictions: pd.DataFrame) -> pd.DataFrame:
    """AUC of each variant over all its out-of-fold test predictions pooled."""
    rows = []
    for variant, group in predictions.groupby("variant"):
        labels = group["label"].to_numpy()
        auc = roc_auc_score(labels, group["probability"]) if labels.min() != labels.max() \
            else float("nan")
        rows.append({"variant": variant, "n": len(group), "pooled_auc": auc})
    return pd.DataFrame(rows)


DELONG_COLUMNS = ["reference", "other", "n", "n_folds", "auc_reference", "auc_other",
                  "difference", "z", "p_value"]
TTEST_COLUMNS = ["ttest_n_folds", "ttest_mean_difference", "ttest_t", "ttest_p_value"]


def fold_ttests(metrics: pd.DataFrame, reference: str = "mmfusion") -> pd.DataFrame:
    """Paired t-test over folds of the per-fold test AUCs (metrics.json), `reference` against
    every other variant (scipy.stats.ttest_rel; what the paper reports). Folds where either
    AUC is undefined are left out; fewer than two folds give NaN."""
    wide = metrics.pivot_table(index="fold", columns="variant", values="auc",
                               aggfunc="first", observed=True)
    wide.columns = [str(c) for c in wide.columns]
    rows = []
    if reference in wide:
        for other in _order([v for v in wide.columns if v != reference]):
            both = wide[[reference, other]].astype(float).dropna()
            diff = both[reference] - both[other]
            t, p = (ttest_rel(both[reference], both[other]) if len(both) >= 2
                    else (float("nan"), float("nan")))
            rows.append({"reference": reference, "other": other,
                         "ttest_n_folds": len(both),
                         "ttest_mean_difference": float(diff.mean()) if len(both) else
                         float("nan"), "ttest_t": float(t), "ttest_p_value": float(p)})
    return pd.DataFrame(rows, columns=["reference", "other", *TTEST_COLUMNS])


def paired_tests(predictions: pd.DataFrame, reference: str = "mmfusion",
                 metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fold-stratified DeLong tests of `reference` against every other variant: within each
    test fold on the same patients, combined over folds (mean AUC difference). With
    `metrics` (collect_metrics), the paired t-test over folds (`fold_ttests`) is added as
    the `ttest_*` columns."""
    wide = predictions.pivot_table(index=["fold", "patient_id"], columns="variant",
                                   values="probability", aggfunc="first")
    labels = predictions.groupby(["fold", "patient_id"])["label"].first().reindex(wide.index)
    rows = []
    for other in _order([v for v in wide.columns if v != reference]):
        if reference not in wide:
            break
        both = wide[[reference, other]].dropna()
        y = labels.reindex(both.index).to_numpy()
        if len(both) < 4 or y.min() == y.max():
            continue
        folds = both.index.get_level_values("fold").to_numpy()
        try:
            res = stratified_delong_test(both[reference].to_numpy(), both[other].to_numpy(),
                                         y, folds)
        except ValueError:  # no fold holds both classes
            continue
        rows.append({"reference": reference, "other": other, "n": len(both),
                     "n_folds": int(len(np.unique(folds))),
                     "auc_reference": res.auc_a, "auc_other": res.auc_b,
                     "difference": res.difference, "z": res.z, "p_value": res.p_value})
    delong = pd.DataFrame(rows, columns=DELONG_COLUMNS)
    if metrics is None:
        return delong
    merged = delong.merge(fold_ttests(metrics, reference), on=["reference", "other"],
                          how="outer")
    merged["order"] = merged["other"].map({v: i for i, v in enumerate(
        _order(list(merged["other"])))})
    return merged.sort_values("order").drop(columns="order").reset_index(drop=True)


def oracle_by_fold(predictions: pd.DataFrame, truth_csv: str | Path) -> pd.DataFrame:
    """Demo only: the oracle AUC (true probability from truth.csv) on each fold's test set.

    truth.csv is keyed by the synthetic PatientID, which sanitising leaves unchanged.
    """
    truth = pd.read_csv(truth_csv).set_index("patient_id")
    tested = predictions.drop_duplicates(["patient_id", "fold"])[["patient_id", "fold", "label"]]
    rows = []
    for fold, group in tested.groupby("fold"):
        prob = truth["probability"].reindex(group["patient_id"]).to_numpy()
        ok = ~np.isnan(prob)
        y = group["label"].to_numpy()[ok]
        auc = roc_auc_score(y, prob[ok]) if ok.any() and y.min() != y.max() else float("nan")
        rows.append({"variant": "oracle", "fold": int(fold), "auc": auc})
    return pd.DataFrame(rows)
