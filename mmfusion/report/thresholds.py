"""Threshold metrics recomputed from the test predictions: the confusion matrix at each fold's
validation-chosen threshold (`metrics.json` `threshold`, Youden's J on the validation split)
and every threshold metric at 0.5, the paper's operating point.

A patient is predicted positive when `probability >= threshold`, as in
`mmfusion.train.metrics.binary_metrics`; a ratio with an empty denominator is 0, as there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The metrics that depend on a threshold (metrics_summary.csv names; recall = sensitivity).
THRESHOLD_METRICS = ["accuracy", "precision", "recall", "f1", "balanced_accuracy",
                     "specificity"]
COUNTS = ["tp", "fp", "tn", "fn"]
PAPER_THRESHOLD = 0.5
SUFFIX = "_at_0.5"


def confusion_counts(labels: np.ndarray, probabilities: np.ndarray, threshold: float
                     ) -> dict[str, int]:
    """True/false positives/negatives of `probability >= threshold` against 0/1 labels."""
    y = np.asarray(labels).astype(int)
    pred = np.asarray(probabilities, dtype=float) >= threshold
    return {"tp": int((pred & (y == 1)).sum()), "fp": int((pred & (y == 0)).sum()),
            "tn": int((~pred & (y == 0)).sum()), "fn": int((~pred & (y == 1)).sum())}


def metrics_from_counts(counts: dict[str, int]) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), F1, balanced accuracy and specificity."""
    tp, fp, tn, fn = (counts[k] for k in COUNTS)

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    recall, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {"accuracy": ratio(tp + tn, tp + fp + tn + fn), "precision": ratio(tp, tp + fp),
            "recall": recall, "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "balanced_accuracy": (recall + specificity) / 2, "specificity": specificity}


def fold_threshold_table(predictions: pd.DataFrame, thresholds: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, fold): the confusion counts at the fold's chosen threshold, then
    the threshold metrics and counts at 0.5 (columns suffixed `_at_0.5`).

    Args:
        predictions: test predictions (variant, fold, probability, label).
        thresholds: variant, fold, threshold (the validation-chosen one; NaN if unknown).
    """
    chosen = {(str(v), int(f)): t for v, f, t in
              thresholds[["variant", "fold", "threshold"]].itertuples(index=False)}
    rows = []
    for (variant, fold), g in predictions.groupby(["variant", "fold"], sort=True):
        y, p = g["label"].to_numpy(), g["probability"].to_numpy()
        row: dict[str, object] = {"variant": str(variant), "fold": int(fold)}
        thr = chosen.get((str(variant), int(fold)))
        if thr is not None and np.isfinite(thr):
            row.update(confusion_counts(y, p, float(thr)))
        else:
            row.update(dict.fromkeys(COUNTS, np.nan))
        at = confusion_counts(y, p, PAPER_THRESHOLD)
        row.update({f"{k}{SUFFIX}": v for k, v in metrics_from_counts(at).items()})
        row.update({f"{k}{SUFFIX}": v for k, v in at.items()})
        rows.append(row)
    columns = ["variant", "fold", *COUNTS, *[f"{k}{SUFFIX}" for k in THRESHOLD_METRICS + COUNTS]]
    return pd.DataFrame(rows, columns=columns)


def confusion_table(fold_table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Confusion counts summed over folds, per variant and operating point
    (`validation`: each fold's chosen threshold; `0.5`), with the metrics of the sums."""
    rows = []
    for variant in order:
        g = fold_table[fold_table["variant"] == variant]
        for point, suffix in (("validation", ""), ("0.5", SUFFIX)):
            cols = [f"{k}{suffix}" for k in COUNTS]
            if g.empty or g[cols].isna().any().any():
                continue
            counts = {k: int(g[c].sum()) for k, c in zip(COUNTS, cols, strict=True)}
            rows.append({"variant": variant, "threshold": point, "n": sum(counts.values()),
                         **counts, **metrics_from_counts(counts)})
    return pd.DataFrame(rows, columns=["variant", "threshold", "n", *COUNTS,
                                       *THRESHOLD_METRICS])
