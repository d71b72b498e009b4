"""Metrics: rank AUC equals sklearn's, threshold and confusion-based values."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from mmfusion.train.metrics import _rank_auc, auc_ci, binary_metrics, youden_threshold


def test_rank_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p = np.round(rng.random(50), 1)
    assert np.isclose(_rank_auc(y, p), roc_auc_score(y, p))
    lo, hi = auc_ci(y, p, n_boot=200)
    assert lo <= roc_auc_score(y, p) <= hi


def test_binary_metrics_values():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.3, 0.6, 0.8])
    m = binary_metrics(y, p, threshold=0.5)
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.6, 2 / 3, 2 / 3)
    assert np.isclose(m["specificity"], 0.5) and np.isclose(m["f1"], 2 / 3)
    assert np.isclose(m["brier"], np.mean((p - y) ** 2))
    assert 0.3 < youden_threshold(y, p) <= 0.9
    assert np.isnan(binary_metrics(np.ones(3), np.ones(3) * 0.7)["auc"])


def test_json_safe_writes_null_for_undefined_values():
    import json

    from mmfusion.train.metrics import json_safe

    m = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]))  # one class: no AUC
    text = json.dumps(json_safe({"val": m, "x": [np.float32(1.5), float("inf")]}),
                      allow_nan=False)
    back = json.loads(text)
    assert back["val"]["auc"] is None and back["x"] == [1.5, None]
