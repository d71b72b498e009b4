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


def _member(folder, variant: str, fold: int, seed: int, val: list[float], test: list[float],
            unc: float = 0.0) -> None:
    """A seed's folder: val/test predictions (recalibrated = raw + 0.1) and metrics.json."""
    import json

    from mmfusion.train.fold import write_predictions

    folder.mkdir(parents=True)
    for name, p, labels, ids in (("val_predictions.csv", val, [0, 1, 0, 1], "V"),
                                 ("predictions.csv", test, [0, 0, 1, 1], "T")):
        write_predictions(folder / name, [f"{ids}{i}" for i in range(4)],
                          np.array(labels), fold, variant, np.array(p),
                          np.full(4, unc), np.array(p) - 0.1)
    (folder / "metrics.json").write_text(json.dumps(
        {"variant": variant, "fold": fold, "best_epoch": 3, "threshold": 0.5,
         "test": {"auc": 0.5, "brier": 0.25}, "settings": {"train": {"seed": seed}}}))


def test_seed_ensemble_averages_recalibrated_probabilities(tmp_path) -> None:
    from mmfusion.train.seed_ensemble import ensemble_seeds

    a, b = tmp_path / "fold1" / "seed0", tmp_path / "fold1" / "seed1"
    # test: seed 0 ranks patient T1 above T2 (AUC 0.75), seed 1 the reverse; their mean
    # 0.25, 0.45, 0.40, 0.70 ranks like neither
    _member(a, "base1", 1, 0, [0.2, 0.6, 0.3, 0.7], [0.1, 0.6, 0.5, 0.8], unc=0.3)
    _member(b, "base1", 1, 77, [0.4, 0.8, 0.1, 0.5], [0.4, 0.3, 0.3, 0.6], unc=0.4)
    m = ensemble_seeds([a, b], tmp_path / "fold1", "base1", 1)
    pred = pd.read_csv(tmp_path / "fold1" / "predictions.csv")
    np.testing.assert_allclose(pred["probability"], [0.25, 0.45, 0.40, 0.70])
    np.testing.assert_allclose(pred["probability_raw"], [0.15, 0.35, 0.30, 0.60])
    # uncertainty: sqrt(mean(0.3², 0.4²) + var over seeds), e.g. T0: var(0.1, 0.4) = 0.0225
    assert pred["uncertainty"].iloc[0] == pytest.approx(math.sqrt(0.125 + 0.0225))
    # AUC of the mean (not the mean of the AUCs): positives 0.40, 0.70 vs 0.25, 0.45 -> 3/4
    assert m["test"]["auc"] == pytest.approx(0.75)
    val = pd.read_csv(tmp_path / "fold1" / "val_predictions.csv")
    np.testing.assert_allclose(val["probability"], [0.30, 0.70, 0.20, 0.60])
    assert m["threshold"] == pytest.approx(0.6)  # Youden on the ensemble's validation
    assert m["n_seeds"] == 2 and [x["seed"] for x in m["members"]] == [0, 77]
    assert set(pred["fold"]) == {1} and set(pred["variant"]) == {"base1"}


def test_training_seeds() -> None:
    from mmfusion.train.seed_ensemble import training_seed

    assert training_seed(0, 0) == 0 and training_seed(123, 0) == 123  # S = 1: unchanged
    seeds = [training_seed(123, s) for s in range(1, 6)]
    assert len(set(seeds)) == 5 and 123 not in seeds
    assert seeds == [training_seed(123, s) for s in range(1, 6)]  # deterministic
    assert all(0 <= s < 2 ** 31 for s in seeds)


def test_repeated_folds() -> None:
    from mmfusion.cohort.folds import FoldSettings, fold_repeats, make_folds, repeat_seed

    ids, y = [f"P{i:03d}" for i in range(40)], np.array([0, 1] * 20)
    one = make_folds(ids, y, FoldSettings(repeats=1))
    three = make_folds(ids, y, FoldSettings(repeats=3))
    assert list(one.columns) == ["patient_id", "fold", "split"]  # R = 1: today's columns
    assert sorted(three["fold"].unique()) == list(range(9))
    assert fold_repeats(three) == {g: g // 3 for g in range(9)}
    assert fold_repeats(one) == {0: 0, 1: 0, 2: 0}
    first = three[three["repeat"] == 0].drop(columns="repeat").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, one)  # repeat 0 = the folds of R = 1
    tests = three[three["split"] == "test"]
    assert (tests.groupby("patient_id")["repeat"].nunique() == 3).all()  # once per repeat
    assert tests.set_index(["repeat", "patient_id"])["fold"].unstack(0).nunique().min() > 0
    assert repeat_seed(5, 0) == 5 and len({repeat_seed(5, r) for r in range(4)}) == 4
