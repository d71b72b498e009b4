"""Classical baselines: fit on train arrays only, probabilities for other splits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmfusion.errors import ConfigError
from mmfusion.model.baselines import BASELINES, fit_predict_baseline, stack_groups


def arrays(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    clinical = rng.normal(size=(n, 3)) + y[:, None]
    return {"clinical": clinical.astype(np.float32),
            "hematology": rng.normal(size=(n, 2)).astype(np.float32),
            "radiomics_tumour": rng.normal(size=(n, 4)).astype(np.float32)}, y


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_learns_signal(name):
    train, y = arrays(200, 0)
    test, y_test = arrays(100, 1)
    out = fit_predict_baseline(name, train, y, {"test": test, "part": {
        k: v[:10] for k, v in test.items()}})
    probs = out["test"]
    assert probs.shape == (100,) and ((probs >= 0) & (probs <= 1)).all()
    assert ((probs > 0.5) == y_test).mean() > 0.75
    assert roc_auc_score(y_test, probs) > 0.85  # the signal: clinical shifted by the label
    np.testing.assert_array_equal(out["part"], probs[:10])  # each patient on its own
    if name == "logreg":  # logistic model: the log-odds are affine in the features
        x = np.c_[stack_groups(test), np.ones(100)]
        logit = np.log(probs / (1 - probs))
        coef = np.linalg.lstsq(x, logit, rcond=None)[0]
        # the probabilities are float32: their log-odds carry ~1e-6 rounding where p is
        # near 0 or 1; a non-affine model would miss by orders of magnitude more
        np.testing.assert_allclose(x @ coef, logit, rtol=0, atol=1e-5)
        assert coef[:3].min() > 0  # clinical columns carry the positive class


def test_stack_groups_order_and_errors():
    a, _ = arrays(5, 0)
    assert stack_groups(a).shape == (5, 9)
    with pytest.raises(ValueError, match="none of the groups .* is in the arrays"):
        stack_groups({"other": np.zeros((5, 1))})
    with pytest.raises(ConfigError, match="unknown baseline 'svm'"):
        fit_predict_baseline("svm", a, np.array([0, 1, 0, 1, 0]), {})


def test_gbm_is_not_constant_on_a_demo_sized_fold():
    train, y = arrays(32, 0)  # ~ a demo fold's training part
    test, _ = arrays(20, 1)
    probs = fit_predict_baseline("gbm", train, y, {"test": test})["test"]
    assert np.unique(probs.round(6)).size > 5
