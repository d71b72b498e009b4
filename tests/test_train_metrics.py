"""Metrics: rank AUC equals sklearn's, threshold and confusion-based values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmfusion.train.metrics import _rank_auc, auc_ci, binary_metrics, youden_threshold


def test_rank_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p = np.round(rng.random(50), 1)
    assert np.isclose(_rank_auc(y, p), roc_auc_score(y, p))


def test_auc_ci_is_the_percentile_bootstrap_and_as_wide_as_delong():
    """2.5 / 97.5 % percentiles of the AUC over patient resamples (resamples with one class
    skipped), recomputed with sklearn; its width agrees with DeLong's standard error."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60) + 0.4 * y, 2)
    lo, hi = auc_ci(y, p, n_boot=400, seed=3)
    draws = np.random.default_rng(3).integers(0, 60, (400, 60))
    aucs = [roc_auc_score(y[i], p[i]) for i in draws if 0 < y[i].sum() < 60]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])), abs=1e-12)
    # DeLong: variance from the structural components V10 (positives), V01 (negatives)
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    se = np.sqrt(psi.mean(1).var(ddof=1) / len(pos) + psi.mean(0).var(ddof=1) / len(neg))
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert lo < roc_auc_score(y, p) < hi and hi - lo > 0.05
    # perfectly separated: every resample has AUC 1; one class only: no interval
    assert auc_ci(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == (1.0, 1.0)
    assert all(np.isnan(auc_ci(np.ones(5), np.linspace(0, 1, 5))))
    assert all(np.isnan(auc_ci(np.array([]), np.array([]))))


def test_binary_metrics_values():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.3, 0.6, 0.8])
    m = binary_metrics(y, p, threshold=0.5)
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.6, 2 / 3, 2 / 3)
    assert np.isclose(m["specificity"], 0.5) and np.isclose(m["f1"], 2 / 3)
    assert np.isclose(m["brier"], np.mean((p - y) ** 2))
    assert np.isclose(m["balanced_accuracy"], (2 / 3 + 0.5) / 2)
    assert np.isclose(m["auc"], 5 / 6)  # 5 of the 6 positive-negative pairs ordered
    assert m["n"] == 5 and m["threshold"] == 0.5
    # FP != FN: TP 1, FN 1, FP 2, TN 2 at threshold 0.5
    m = binary_metrics(np.array([1, 1, 0, 0, 0, 0]), np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.1]))
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == 0.5
    assert m["specificity"] == 0.5 and m["balanced_accuracy"] == 0.5
    assert m["f1"] == pytest.approx(0.4) and m["accuracy"] == 0.5
    # Youden: J(t) = TPR - FPR with "p >= t" positive is 1/3, 2/3, 1/6, 1/2, 0 at
    # t = 0.9, 0.8, 0.6, 0.4, 0.3: the maximum is at 0.8
    assert youden_threshold(y, p) == 0.8
    assert np.isnan(binary_metrics(np.ones(3), np.ones(3) * 0.7)["auc"])
    assert youden_threshold(np.ones(3), np.array([0.2, 0.6, 0.9])) == 0.5  # undefined


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_maximises_j_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    p = np.round(rng.random(40) * 0.6 + 0.3 * y, 2)  # ties included

    def j(t: float) -> float:
        pred = p >= t
        return pred[y == 1].mean() - pred[y == 0].mean()

    best = max(j(t) for t in np.unique(p))
    t = youden_threshold(y, p)
    assert t in set(p) and j(t) == pytest.approx(best, abs=1e-12)
    # the highest threshold reaching the maximum (fewest positive calls)
    assert t == max(u for u in np.unique(p) if j(u) == pytest.approx(best, abs=1e-12))


def test_json_safe_writes_null_for_undefined_values():
    import json

    from mmfusion.train.metrics import json_safe

    m = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]))  # one class: no AUC
    text = json.dumps(json_safe({"val": m, "x": [np.float32(1.5), float("inf")]}),
                      allow_nan=False)
    back = json.loads(text)
    assert back["val"]["auc"] is None and back["x"] == [1.5, None]
