"""DeLong's test for two correlated ROC AUCs on the same patients (DeLong et al. 1988),
in the fast O(n log n) form of Sun & Xu (IEEE SPL 2014), and its fold-stratified form.

Cross-validated models are compared fold by fold: each fold's test patients were scored by
that fold's models, whose probability scales differ between folds (e.g. a per-fold
temperature), so pooling all folds' predictions into one AUC mixes scales and is not the
mean-over-folds AUC the tables report. `stratified_delong_test` tests the mean over folds of
the AUC difference, with variance sum_k var_k / K^2 (disjoint test patients per fold)."""

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


def _difference(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray
                ) -> tuple[float, float, float]:
    """AUC(a), AUC(b) and the DeLong variance of their difference on one set of patients."""
    auc_a, v10_a, v01_a = _placements(np.asarray(scores_a, float), labels)
    auc_b, v10_b, v01_b = _placements(np.asarray(scores_b, float), labels)
    m, n = len(v10_a), len(v01_a)
    # (co)variances of the placements; a class with one patient contributes none
    s10 = np.cov(np.stack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.stack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    return auc_a, auc_b, float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def _result(auc_a: float, auc_b: float, var: float) -> DelongResult:
    diff = auc_a - auc_b
    if var <= 0.0:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    p = float(2 * norm.sf(abs(z)))
    return DelongResult(auc_a, auc_b, diff, math.sqrt(max(var, 0.0)), z, p)


def stratified_delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray,
                           strata: np.ndarray) -> DelongResult:
    """Two-sided test of mean_k AUC_k(a) == mean_k AUC_k(b) over strata k (test folds).

    Strata without both classes are skipped; `auc_a`/`auc_b` are the means over the rest.
    """
    labels = np.asarray(labels).astype(int)
    strata = np.asarray(strata)
    parts = []
    for k in np.unique(strata):
        rows = strata == k
        if labels[rows].min() != labels[rows].max():
            parts.append(_difference(np.asarray(scores_a)[rows], np.asarray(scores_b)[rows],
                                     labels[rows]))
    if not parts:
        raise ValueError("DeLong's test needs both classes in at least one stratum")
    a, b, var = (np.array(x, float) for x in zip(*parts, strict=True))
    return _result(float(a.mean()), float(b.mean()), float(var.sum()) / len(parts) ** 2)


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> DelongResult:
    """Two-sided test of AUC(a) == AUC(b), both scored on the same patients.

    Args:
        scores_a, scores_b: (n,) predicted probabilities of two models.
        labels: (n,) 0/1 truth; both classes must be present.
    """
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        raise ValueError("DeLong's test needs both classes")
    return _result(*_difference(scores_a, scores_b, labels))
