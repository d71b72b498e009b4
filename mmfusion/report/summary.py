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
from sklearn.metrics import roc_auc_score

from mmfusion.errors import MMFusionError
from mmfusion.model.variants import BASELINES, VARIANTS
from mmfusion.report.delong import stratified_delong_test

METRIC_COLUMNS = ["auc", "accuracy", "precision", "recall", "f1", "brier",
                  "balanced_accuracy", "specificity"]
# Paper Table 2 order; anything else follows alphabetically.
VARIANT_ORDER = [*VARIANTS, *BASELINES]


def _order(variants: list[str]) -> list[str]:
    known = [v for v in VARIANT_ORDER if v in variants]
    return known + sorted(set(variants) - set(known))


def find_outputs(models_dir: str | Path, name: str) -> list[Path]:
    """Every `models_dir/{variant}/fold{k}/name`."""
    return sorted(Path(models_dir).glob(f"*/fold*/{name}"))


def collect_metrics(paths: list[str | Path]) -> pd.DataFrame:
    """One row per (variant, fold) with the test metrics; metrics_summary.csv.

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


def variant_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over folds of every metric, one row per variant (paper Table 2 shape)."""
    grouped = metrics.groupby("variant", observed=True)[METRIC_COLUMNS]
    mean, sd = grouped.mean(), grouped.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    out["n_folds"] = metrics.groupby("variant", observed=True)["fold"].nunique()
    for col in METRIC_COLUMNS:
        out[f"{col}_mean"] = mean[col]
        out[f"{col}_sd"] = sd[col]
    return out.reset_index()


def pooled_auc(predictions: pd.DataFrame) -> pd.DataFrame:
    """AUC of each variant over all its out-of-fold test predictions pooled."""
    rows = []
    for variant, group in predictions.groupby("variant"):
        labels = group["label"].to_numpy()
        auc = roc_auc_score(labels, group["probability"]) if labels.min() != labels.max() \
            else float("nan")
        rows.append({"variant": variant, "n": len(group), "pooled_auc": auc})
    return pd.DataFrame(rows)


def paired_tests(predictions: pd.DataFrame, reference: str = "mmfusion") -> pd.DataFrame:
    """Fold-stratified DeLong tests of `reference` against every other variant: within each
    test fold on the same patients, combined over folds (mean AUC difference)."""
    wide = predictions.pivot_table(index=["fold", "patient_id"], columns="variant",
                                   values="probability", aggfunc="first")
    labels = predictions.groupby(["fold", "patient_id"])["label"].first().reindex(wide.index)
    rows = []
    if reference not in wide:
        return pd.DataFrame(columns=["reference", "other", "n", "n_folds", "auc_reference",
                                     "auc_other", "difference", "z", "p_value"])
    for other in _order([v for v in wide.columns if v != reference]):
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
    return pd.DataFrame(rows)


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
