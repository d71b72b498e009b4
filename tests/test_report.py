"""Report stage: DeLong's test against a direct computation, tables over folds, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mmfusion.cli import main
from mmfusion.report.delong import delong_test, stratified_delong_test
from mmfusion.report.summary import collect_metrics, paired_tests, variant_table


def _delong_direct(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 from its definition: psi over every positive/negative pair (O(m n))."""
    def comps(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = comps(a), comps(b)
    m, n = len(v10a), len(v01a)
    s10, s01 = np.cov([v10a, v10b]), np.cov([v01a, v01b])
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (v10a.mean() - v10b.mean()) / np.sqrt(var)
    return z, 2 * norm.sf(abs(z))


def test_delong_matches_direct_computation_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    a = np.round(y * 1.5 + rng.normal(0, 0.7, 80), 1)   # rounding makes ties
    b = np.round(y * 0.3 + rng.normal(0, 0.7, 80), 1)
    res = delong_test(a, b, y)
    z, p = _delong_direct(a, b, y)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a))
    assert res.auc_b == pytest.approx(roc_auc_score(y, b))
    assert res.z == pytest.approx(z, rel=1e-9)
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert res.p_value < 0.05  # a is clearly better here


def test_delong_of_a_model_with_itself_is_no_difference() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    a = rng.random(40)
    res = delong_test(a, a, y)
    assert res.difference == 0 and res.p_value == 1.0
    with pytest.raises(ValueError, match="both classes"):
        delong_test(a, a, np.zeros(40))


def _fake_models(root: Path, aucs: dict[str, list[float]]) -> None:
    rng = np.random.default_rng(2)
    ids = [f"P{i:03d}" for i in range(30)]
    labels = rng.integers(0, 2, 30)
    for variant, per_fold in aucs.items():
        for fold, auc in enumerate(per_fold):
            d = root / variant / f"fold{fold}"
            d.mkdir(parents=True)
            test = {"n": 10, "auc": auc, "accuracy": auc - 0.1, "precision": 0.5, "recall": 0.5,
                    "f1": 0.5, "brier": 0.2, "balanced_accuracy": 0.6, "specificity": 0.7,
                    "auc_ci_low": None, "auc_ci_high": None}
            (d / "metrics.json").write_text(json.dumps({"test": test}))
            sl = slice(10 * fold, 10 * fold + 10)
            prob = np.clip(labels[sl] * auc + rng.random(10) * 0.5, 0, 1)
            pd.DataFrame({"patient_id": ids[sl], "fold": fold, "variant": variant,
                          "probability": prob, "uncertainty": 0.0,
                          "label": labels[sl]}).to_csv(d / "predictions.csv", index=False)


def test_tables_over_folds(tmp_path: Path) -> None:
    _fake_models(tmp_path, {"mmfusion": [0.8, 0.9, 0.7], "base1": [0.6, 0.5, 0.7]})
    metrics = collect_metrics(sorted(tmp_path.glob("*/fold*/metrics.json")))
    assert list(metrics["variant"].astype(str)) == ["base1"] * 3 + ["mmfusion"] * 3
    table = variant_table(metrics).set_index("variant")
    assert table.loc["mmfusion", "auc_mean"] == pytest.approx(0.8)
    assert table.loc["mmfusion", "auc_sd"] == pytest.approx(0.1)
    assert table.loc["base1", "n_folds"] == 3
    preds = pd.concat(pd.read_csv(p) for p in tmp_path.glob("*/fold*/predictions.csv"))
    tests = paired_tests(preds, "mmfusion")
    assert list(tests["other"]) == ["base1"] and tests["n"].iloc[0] == 30
    assert tests["n_folds"].iloc[0] == 3  # tested within each fold, combined


def test_report_cli_writes_everything(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _fake_models(models, {"mmfusion": [0.8, 0.9, 0.7], "logreg": [0.7, 0.7, 0.6]})
    out = tmp_path / "report"
    assert main(["report", "--models-dir", str(models), "--out", str(out)]) == 0
    for name in ("metrics_summary.csv", "variants.csv", "paired_tests.csv", "pooled_auc.csv",
                 "summary.md", "figures/roc.png", "figures/calibration.png",
                 "figures/auc_by_fold.png", "figures/decision_curve.png",
                 "figures/confusion_matrices.png", "calibration.csv", "decision_curve.csv",
                 "confusion_matrices.csv", "front_page.rst", "model_card.md"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "metrics_summary.csv")
    assert {"variant", "fold", "auc", "accuracy", "precision", "recall", "f1",
            "brier"} <= set(summary.columns)
    assert "mmfusion" in (out / "summary.md").read_text()


def test_fold_stratified_delong_combines_folds_and_ignores_per_fold_scales() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 90)
    y[:2], y[30:32], y[60:62] = [0, 1], [0, 1], [0, 1]
    folds = np.repeat([0, 1, 2], 30)
    a = y + rng.normal(0, 0.8, 90)
    b = y + rng.normal(0, 1.2, 90)
    # one stratum: the plain test
    one = stratified_delong_test(a, b, y, np.zeros(90))
    plain = delong_test(a, b, y)
    assert one.difference == pytest.approx(plain.difference) and one.se == pytest.approx(plain.se)
    # three folds: mean of the per-fold differences, variance sum / K^2
    per = [delong_test(a[folds == k], b[folds == k], y[folds == k]) for k in range(3)]
    res = stratified_delong_test(a, b, y, folds)
    assert res.auc_a == pytest.approx(np.mean([r.auc_a for r in per]))
    assert res.difference == pytest.approx(np.mean([r.difference for r in per]))
    assert res.se == pytest.approx(np.sqrt(sum(r.se**2 for r in per)) / 3)
    # a model whose probability scale differs per fold (e.g. a per-fold temperature):
    # pooled AUC changes, the fold-stratified test does not
    rescaled = np.where(folds == 1, 10 * a + 30, a)
    assert roc_auc_score(y, rescaled) != pytest.approx(roc_auc_score(y, a))
    again = stratified_delong_test(rescaled, b, y, folds)
    assert again.difference == pytest.approx(res.difference) and again.p_value == pytest.approx(
        res.p_value)
