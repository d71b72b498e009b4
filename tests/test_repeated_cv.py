"""Repeated cross-validation statistics (mmfusion/report/repeated_cv.py) against values
computed by hand, and the seed ensemble's averaging (mmfusion/train/seed_ensemble.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mmfusion.report.repeated_cv import corrected_resampled_ttest, variance_components


def _t3_sf(t: float) -> float:
    """Upper tail of Student's t with 3 df, closed form (not scipy)."""
    x = t / math.sqrt(3.0)
    cdf = 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi
    return 1.0 - cdf


def test_corrected_resampled_ttest_by_hand() -> None:
    # d = 0.02, 0.05, -0.01, 0.04: mean 0.025, squared deviations sum 0.0021, s² = 0.0007;
    # n_test / n_train = 40 / 80 = 0.5: se² = (1/4 + 0.5) 0.0007 = 0.000525
    res = corrected_resampled_ttest([0.02, 0.05, -0.01, 0.04], n_train=80, n_test=40)
    assert res.n == 4 and res.df == 3
    assert res.mean == pytest.approx(0.025)
    assert res.sd == pytest.approx(math.sqrt(0.0007))
    assert res.ratio == pytest.approx(0.5)
    assert res.se == pytest.approx(math.sqrt(0.000525))
    assert res.t == pytest.approx(0.025 / math.sqrt(0.000525))  # 1.0911
    assert res.t == pytest.approx(1.091089, abs=1e-6)
    assert res.p_value == pytest.approx(2 * _t3_sf(1.0910895), abs=1e-6)
    assert res.naive_se == pytest.approx(math.sqrt(0.000175))  # the uncorrected s / sqrt(J)
    assert res.se > res.naive_se


def test_corrected_ttest_edge_cases() -> None:
    one = corrected_resampled_ttest([0.1, float("nan")], n_train=10, n_test=5)
    assert one.n == 1 and math.isnan(one.t) and math.isnan(one.p_value)
    same = corrected_resampled_ttest([0.0, 0.0, 0.0], n_train=10, n_test=5)
    assert same.t == 0.0 and same.p_value == pytest.approx(1.0)
    const = corrected_resampled_ttest([0.1, 0.1, 0.1], n_train=10, n_test=5)
    assert const.t == math.inf and const.p_value == 0.0
    with pytest.raises(ValueError):
        corrected_resampled_ttest([0.1, 0.2], n_train=0, n_test=5)


def _frame(cube: list[list[list[float]]]) -> pd.DataFrame:
    rows = [{"repeat": r, "fold": r * len(folds) + k, "seed": s, "value": v}
            for r, folds in enumerate(cube) for k, seeds in enumerate(folds)
            for s, v in enumerate(seeds)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def test_variance_components_by_hand() -> None:
    # cells (repeat, fold): [0.70, 0.74] [0.80, 0.80] | [0.50, 0.56] [0.65, 0.67]
    # seed: mean of within-cell variances (0.0008, 0, 0.0018, 0.0002) = 0.0007
    # cell means 0.72, 0.80 | 0.53, 0.66: between folds mean(0.0032, 0.00845) = 0.005825
    #   fold = 0.005825 - 0.0007 / 2 = 0.005475
    # repeat means 0.76, 0.595: variance 0.0136125; repeat = 0.0136125 - 0.005825 / 2 = 0.0107
    out = variance_components(_frame([[[0.70, 0.74], [0.80, 0.80]],
                                      [[0.50, 0.56], [0.65, 0.67]]]))
    assert (out["n_repeats"], out["n_folds"], out["n_seeds"]) == (2, 2, 2)
    assert out["var_seed"] == pytest.approx(0.0007)
    assert out["var_fold"] == pytest.approx(0.005475)
    assert out["var_repeat"] == pytest.approx(0.0107)
    assert out["share_seed"] == pytest.approx(0.0007 / 0.016875)
    assert out["share_split"] == pytest.approx((0.005475 + 0.0107) / 0.016875)


def test_variance_components_clip_and_missing_levels() -> None:
    # repeat means 0.76, 0.695: 0.0021125 - 0.0029125 < 0 -> clipped to 0
    out = variance_components(_frame([[[0.70, 0.74], [0.80, 0.80]],
                                      [[0.60, 0.66], [0.75, 0.77]]]))
    assert out["var_repeat"] == 0.0
    assert out["share_seed"] == pytest.approx(0.0007 / (0.0007 + 0.005475))
    # one seed: no seed component, so no shares; one repeat: no repeat component
    single = variance_components(_frame([[[0.70], [0.80], [0.60]]]))
    assert math.isnan(single["var_seed"]) and math.isnan(single["var_repeat"])
    assert single["var_fold"] == pytest.approx(np.var([0.70, 0.80, 0.60], ddof=1))
    assert math.isnan(single["share_seed"])
    with pytest.raises(ValueError, match="balanced"):
        variance_components(_frame([[[0.70, 0.71], [0.80]]]))
