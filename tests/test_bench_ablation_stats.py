"""The ablation benchmark's statistics (bench/bench_ablation.py) on numbers with known
answers: t-intervals by hand, paired t-tests against scipy's ttest_rel."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ablation",
                                                  REPO / "bench" / "bench_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_t_interval_by_hand(bench):
    # mean 3, sd sqrt(2.5), se sqrt(0.5); t(0.975, 4 df) = 2.776445
    mean, low, high = bench.t_interval([1, 2, 3, 4, 5])
    half = 2.7764451051977934 * math.sqrt(0.5)
    assert mean == 3.0
    assert (low, high) == pytest.approx((3 - half, 3 + half), abs=1e-12)
    assert (low, high) == pytest.approx((1.0367568, 4.9632432), abs=1e-6)
    # 90 %: t(0.95, 4 df) = 2.131847
    assert bench.t_interval([1, 2, 3, 4, 5], 0.90)[2] == pytest.approx(
        3 + 2.131846786 * math.sqrt(0.5), abs=1e-8)


def test_t_interval_edge_cases(bench):
    assert bench.t_interval([1, 2, np.nan, 3, 4, 5]) == bench.t_interval([1, 2, 3, 4, 5])
    mean, low, high = bench.t_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in bench.t_interval([]))
    assert bench.t_interval([0.75, 0.75, 0.75]) == (0.75, 0.75, 0.75)


def test_paired_difference_matches_ttest_rel(bench):
    a = [0.80, 0.70, 0.90, 0.75]
    b = [0.70, 0.65, 0.75, 0.65]  # differences 0.10, 0.05, 0.15, 0.10
    d = bench.paired_difference(a, b)
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.1, abs=1e-12)
    # sd sqrt(0.005 / 3), t = 0.1 / (sd / 2) = sqrt(24); t(0.975, 3 df) = 3.182446
    assert d["t"] == pytest.approx(math.sqrt(24), rel=1e-9)
    ref = ttest_rel(a, b)
    assert d["t"] == pytest.approx(ref.statistic, rel=1e-9)
    assert d["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert d["p_value"] == pytest.approx(0.0162766, rel=1e-5)
    half = 3.1824463052837078 * math.sqrt(0.005 / 3) / 2
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((0.1 - half, 0.1 + half), abs=1e-12)
    swapped = bench.paired_difference(b, a)
    assert swapped["mean"] == pytest.approx(-0.1) and swapped["p_value"] == d["p_value"]


def test_paired_difference_edge_cases(bench):
    # a pair with a NaN is dropped, not the whole sample
    d = bench.paired_difference([0.8, np.nan, 0.7, 0.9, 0.75], [0.7, 0.6, 0.65, 0.75, 0.65])
    assert d["n"] == 4 and d["p_value"] == pytest.approx(0.0162766, rel=1e-5)
    same = bench.paired_difference([0.75, 0.5, 1.0], [0.5, 0.25, 0.75])  # all exactly 0.25
    assert same["t"] == math.inf and same["p_value"] == 0.0
    tie = bench.paired_difference([0.8, 0.7], [0.8, 0.7])
    assert tie["mean"] == 0.0 and math.isnan(tie["p_value"])
    one = bench.paired_difference([0.8], [0.7])
    assert one["n"] == 1 and math.isnan(one["p_value"]) and math.isnan(one["ci_low"])
    with pytest.raises(ValueError, match="shape"):
        bench.paired_difference([0.8, 0.7], [0.8])


def _folds() -> pd.DataFrame:
    """3 cohorts x 2 folds: mmfusion cohort means 0.8 / 0.7 / 0.9, base1 below it by
    0.10 / 0.05 / 0.15 on both folds, oracle 0.9 / 0.8 / 0.95."""
    rows = []
    for seed, (m, gap, oracle) in zip((11, 12, 13), [(0.8, 0.10, 0.9), (0.7, 0.05, 0.8),
                                                      (0.9, 0.15, 0.95)], strict=True):
        for fold, shift in ((0, -0.02), (1, 0.02)):
            rows.append((seed, "mmfusion", fold, m + shift, oracle))
            rows.append((seed, "base1", fold, m + shift - gap, oracle))
    return pd.DataFrame(rows, columns=["seed", "variant", "fold", "auc", "oracle_auc"])


def test_summarise_known_answers(bench):
    s = bench.summarise(_folds()).set_index("variant")
    assert list(s.index) == ["mmfusion", "base1", "oracle"]
    t2 = 4.302652729749462  # t(0.975, 2 df)
    m = s.loc["mmfusion"]
    assert m["n_cohorts"] == 3 and m["auc_mean"] == pytest.approx(0.8)
    assert m["auc_ci_high"] - m["auc_mean"] == pytest.approx(t2 * 0.1 / math.sqrt(3))
    ratios = [0.8 / 0.9, 0.7 / 0.8, 0.9 / 0.95]
    assert m["ratio_mean"] == pytest.approx(np.mean(ratios))
    assert math.isnan(m["diff_mean"]) and math.isnan(m["p_cohorts"])
    b = s.loc["base1"]
    assert b["diff_mean"] == pytest.approx(-0.1)
    # differences -0.10, -0.05, -0.15: sd 0.05, t = -0.1 / (0.05 / sqrt 3) = -sqrt(12)
    half = t2 * 0.05 / math.sqrt(3)
    assert (b["diff_ci_low"], b["diff_ci_high"]) == pytest.approx((-0.1 - half, -0.1 + half))
    assert b["p_cohorts"] == pytest.approx(0.0741799, rel=1e-5)
    assert b["p_cohorts"] == pytest.approx(
        ttest_rel([0.7, 0.65, 0.75], [0.8, 0.7, 0.9]).pvalue, rel=1e-9)
    # cohort x fold pairs: six differences, each cohort's twice
    assert b["n_fold_pairs"] == 6 and b["diff_folds"] == pytest.approx(-0.1)
    assert b["p_folds"] == pytest.approx(0.0027650, rel=1e-4)
    o = s.loc["oracle"]
    assert o["n_cohorts"] == 3 and o["auc_mean"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)


def test_summary_markdown_table(bench):
    summary = bench.summarise(_folds())
    text = bench.summary_markdown(summary, [11, 12, 13], 120, 2)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header + mmfusion, base1, oracle
    assert table[1].startswith("| **mmfusion** | 0.800 [")
    assert "| -0.100 [-0.224, +0.024] | 0.074 |" in table[2]
    assert "synth seeds 11-13" in text


def test_seed_config_shrinks_training_consistently(bench):
    base = {"synth": {"n_patients": 120, "seed": 1}, "cohort": {"synthetic": True},
            "train": {"epochs": 40, "warmup_epochs": 10, "restart_epoch": 32,
                      "select_from": 20}, "model": {"variants": ["mmfusion"]}}
    c = bench.seed_config(base, 1005, ["logreg", "base1"], REPO / "r", n_patients=24,
                          epochs=4, apply_mask=True)
    assert c["synth"] == {"n_patients": 24, "seed": 1005}
    assert c["train"] == {"epochs": 4, "warmup_epochs": 1, "restart_epoch": 3,
                          "select_from": 2}
    assert c["model"]["variants"] == ["logreg", "base1"] and c["crop"]["apply_mask"] is True
    assert base["train"]["epochs"] == 40  # the base config is left alone
    plain = bench.seed_config(base, 1005, ["mmfusion"], REPO / "r")
    assert plain["train"] == base["train"] and "crop" not in plain
