"""Binary classification metrics for the metastasis class (DESIGN §6)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) replaced by None, recursively, so
    `json.dumps(..., allow_nan=False)` writes valid JSON (`null`, never `NaN`)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def safe_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present."""
    y = np.asarray(y).astype(int)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (0.5 if undefined)."""
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thr[best], 0.0), 1.0))


def _rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """AUC as the Mann–Whitney statistic (ties count half); y has both classes."""
    ranks = rankdata(p)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_ci(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0
           ) -> tuple[float, float]:
    """95% percentile-bootstrap confidence interval of the AUC (patient resampling)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    if len(y) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for idx in rng.integers(0, len(y), (n_boot, len(y))):
        yb = y[idx]
        if 0 < yb.sum() < len(yb):
            values.append(_rank_auc(yb, p[idx]))
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC (+95% CI), accuracy, precision, recall, F1, specificity, balanced accuracy, Brier."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    specificity = ratio(tn, tn + fp)
    lo, hi = auc_ci(y, p)
    return {
        "n": int(len(y)),
        "auc": safe_auc(y, p),
        "auc_ci_low": lo,
        "auc_ci_high": hi,
        "accuracy": ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": specificity,
        "balanced_accuracy": (recall + specificity) / 2,
        "brier": float(np.mean((p - y) ** 2)) if len(y) else float("nan"),
        "threshold": float(threshold),
    }
