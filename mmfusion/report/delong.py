"""DeLong's test for two correlated ROC AUCs on the same patients (DeLong et al. 1988),
in the fast O(n log n) form of Sun & Xu (IEEE SPL 2014)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class DelongResult:
    auc_a: float
    auc_b: float
    difference: float      # auc_a - auc_b
    se: float
    z: float
    p_value: float         # two-sided


def _placements(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the structural components V10 (per positive) and V01 (per negative)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = len(pos), len(neg)
    r_all = rankdata(np.concatenate([pos, neg]))
    r_pos, r_neg = rankdata(pos), rankdata(neg)
    v10 = (r_all[:m] - r_pos) / n          # share of negatives below each positive
    v01 = 1.0 - (r_all[m:] - r_neg) / m    # share of positives above each negative
    auc = float(v10.mean())
    return auc, v10, v01


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> DelongResult:
    """Two-sided test of AUC(a) == AUC(b), both scored on the same patients.

    Args:
        scores_a, scores_b: (n,) predicted probabilities of two models.
        labels: (n,) 0/1 truth; both classes must be present.
    """
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        raise ValueError("DeLong's test needs both classes")
    auc_a, v10_a, v01_a = _placements(np.asarray(scores_a, float), labels)
    auc_b, v10_b, v01_b = _placements(np.asarray(scores_b, float), labels)
    s10 = np.cov(np.stack([v10_a, v10_b]))
    s01 = np.cov(np.stack([v01_a, v01_b]))
    m, n = len(v10_a), len(v01_a)
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = auc_a - auc_b
    if var <= 0.0:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    p = float(2 * norm.sf(abs(z)))
    return DelongResult(auc_a, auc_b, diff, math.sqrt(max(var, 0.0)), z, p)
