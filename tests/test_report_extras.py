"""Report stage, reviewer items: decision curves, confusion matrices and metrics at 0.5,
calibration slope/intercept, paired t-test over folds, the front page fragment and the model
card, built from small generated predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit, logit
from scipy.stats import ttest_rel
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mmfusion.cli import main
from mmfusion.report.build import FIGURES
from mmfusion.report.calibration import calibration_bins, recalibrate
from mmfusion.report.cohort_facts import exclusion_counts
from mmfusion.report.decision import decision_curves, net_benefit, treat_all_benefit
from mmfusion.report.summary import METRIC_COLUMNS, collect_metrics, fold_ttests
from mmfusion.report.thresholds import (
    SUFFIX,
    THRESHOLD_METRICS,
    confusion_counts,
    confusion_table,
    fold_threshold_table,
    metrics_from_counts,
)
from mmfusion.settings import resolve_config
from mmfusion.train.metrics import binary_metrics

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VARIANTS = {"base1": 0.3, "mmfusion": 1.0, "logreg": 0.6}
N_FOLDS, PER_FOLD = 3, 30


def _write_run(root: Path) -> dict[str, Path]:
    """A small finished run: models/{variant}/fold{k}/ (metrics.json with a validation
    threshold, predictions.csv), cohort table, folds, feature spec, exclusions and a
    resolved config of a real cohort configured with absolute paths."""
    rng = np.random.default_rng(11)
    n = N_FOLDS * PER_FOLD
    ids = [f"PAT-{i:03d}" for i in range(n)]
    labels = rng.integers(0, 2, n)
    labels[::PER_FOLD], labels[1::PER_FOLD] = 0, 1  # both classes in every fold
    for variant, strength in VARIANTS.items():
        for fold in range(N_FOLDS):
            d = root / "models" / variant / f"fold{fold}"
            d.mkdir(parents=True)
            sl = slice(fold * PER_FOLD, (fold + 1) * PER_FOLD)
            y = labels[sl]
            prob = np.round(expit(strength * (2 * y - 1) + rng.normal(0, 1, PER_FOLD)), 6)
            threshold = float(np.quantile(prob, 0.6))
            test = binary_metrics(y, prob, threshold)
            (d / "metrics.json").write_text(json.dumps(
                {"variant": variant, "fold": fold, "threshold": threshold, "test": test}))
            pd.DataFrame({"patient_id": ids[sl], "fold": fold, "variant": variant,
                          "probability": prob, "uncertainty": 0.0,
                          "label": y}).to_csv(d / "predictions.csv", index=False)
    cohort = root / "cohort"
    cohort.mkdir()
    pd.DataFrame({"patient_id": ids, "label": labels, "age": 60}).to_csv(
        cohort / "table.tsv", sep="\t", index=False)
    rows = []
    for fold in range(N_FOLDS):
        for i, pid in enumerate(ids):
            split = ("test" if i // PER_FOLD == fold else
                     "val" if i % 5 == 0 else "train")
            rows.append({"patient_id": pid, "fold": fold, "split": split})
    pd.DataFrame(rows).to_csv(cohort / "folds.tsv", sep="\t", index=False)
    spec = {"groups": {"clinical": {"numeric": ["age"], "categorical": {"sex": ["M", "F"]}},
                       "hematology": {"numeric": ["crp"], "categorical": {}},
                       "radiomics_tumour": ["gtvt_a", "gtvt_b"], "radiomics_node": ["gtvn_a"]},
            "flags": {"radiomics_node": ["gtvn_present", "gtvn_count"]},
            "sources": {"clinical": "/secret/site/clinical.csv"}}
    (cohort / "feature_spec.json").write_text(json.dumps(spec))
    (root / "qc").mkdir()
    pd.DataFrame([
        {"patient_id": "EXC-001", "stage": "convert",
         "reason": "[patient EXC-001, file /secret/site/EXC-001/ct/1.dcm] CT series has a "
                   "missing slice Potential fix: re-export the series"},
        {"patient_id": "EXC-002", "stage": "convert",
         "reason": "[patient EXC-002, file /secret/site/EXC-002/ct/9.dcm] CT series has a "
                   "missing slice Potential fix: re-export the series"},
        {"patient_id": "EXC-003", "stage": "cohort", "reason": "no label (lnm missing)"},
        {"patient_id": "EXC-004", "stage": "convert",
         "reason": "RTSTRUCT of EXC-004 unreadable at /secret/site/EXC-004/rs.dcm"},
    ]).to_csv(root / "qc" / "exclusions.tsv", sep="\t", index=False)
    config = resolve_config({
        "cohort": {"synthetic": False, "dicom_root": "/secret/site/dicom",
                   "clinical": "/secret/site/clinical.csv",
                   "hematology": "/secret/site/hematology.csv"},
        "model": {"variants": list(VARIANTS), "pretrained": "/secret/weights/resnet_10.pth"},
        "folds": {"n_folds": N_FOLDS}})
    (root / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    return {"models": root / "models", "table": cohort / "table.tsv",
            "folds": cohort / "folds.tsv", "spec": cohort / "feature_spec.json",
            "exclusions": root / "qc" / "exclusions.tsv",
            "config": root / "config.resolved.yaml"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run root, report folder) of one `mmfusion report` over the small run."""
    root = tmp_path_factory.mktemp("run")
    files = _write_run(root)
    out = root / "report"
    assert main(["report", "--models-dir", str(files["models"]), "--out", str(out),
                 "--config", str(files["config"]), "--table", str(files["table"]),
                 "--folds", str(files["folds"]), "--spec", str(files["spec"]),
                 "--exclusions", str(files["exclusions"])]) == 0
    return root, out


def test_every_figure_is_a_non_blank_png(built: tuple[Path, Path]) -> None:
    _, out = built
    for name in FIGURES:
        path = out / "figures" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        pixels = matplotlib.image.imread(path)
        assert pixels.size > 0 and float(pixels.var()) > 0, f"{name} is blank"
    for name in ("calibration.csv", "decision_curve.csv", "confusion_matrices.csv",
                 "paired_tests.csv", "summary.md", "front_page.rst", "model_card.md"):
        assert (out / name).is_file(), name


def test_metrics_summary_has_contract_and_0_5_columns(built: tuple[Path, Path]) -> None:
    root, out = built
    summary = pd.read_csv(out / "metrics_summary.csv")
    assert len(summary) == len(VARIANTS) * N_FOLDS
    assert set(zip(summary["variant"], summary["fold"], strict=True)) == {
        (v, k) for v in VARIANTS for k in range(N_FOLDS)}
    contract = ["variant", "fold", "n", *METRIC_COLUMNS, "auc_ci_low", "auc_ci_high",
                "threshold", "best_epoch", "temperature", "tp", "fp", "tn", "fn"]
    at_half = [f"{m}{SUFFIX}" for m in [*THRESHOLD_METRICS, "tp", "fp", "tn", "fn"]]
    assert set(contract + at_half) <= set(summary.columns)
    assert "sensitivity" not in summary and "recall_at_0.5" in summary  # recall = sensitivity
    # the 0.5 metrics equal the training code's at 0.5; chosen-threshold counts agree
    # with metrics.json (both from the same predictions)
    for r in summary.itertuples():
        pred = pd.read_csv(root / "models" / r.variant / f"fold{r.fold}" / "predictions.csv")
        ref = binary_metrics(pred["label"], pred["probability"], 0.5)
        for m in THRESHOLD_METRICS:
            assert summary.loc[r.Index, f"{m}{SUFFIX}"] == pytest.approx(ref[m], abs=1e-6)
        counts = {k: summary.loc[r.Index, k] for k in ("tp", "fp", "tn", "fn")}
        assert metrics_from_counts(counts)["recall"] == pytest.approx(r.recall, abs=1e-6)
        assert metrics_from_counts(counts)["accuracy"] == pytest.approx(r.accuracy, abs=1e-6)
    variants = pd.read_csv(out / "variants.csv")
    assert "recall_at_0.5_mean" in variants and "auc_mean" in variants


def test_net_benefit_by_hand() -> None:
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.7, 0.2, 0.3])
    # p_t = 0.5: treated 0.9, 0.6, 0.7 -> TP 2, FP 1: 2/5 - 1/5 * (0.5 / 0.5) = 0.2
    # p_t = 0.25: treated 0.9, 0.6, 0.7, 0.3 -> TP 3, FP 1: 3/5 - 1/5 * (1/3) = 8/15
    # p_t = 0.6: 0.6 itself is treated (>=) -> TP 2, FP 1: 2/5 - 1/5 * 1.5 = 0.1
    nb = net_benefit(y, p, np.array([0.5, 0.25, 0.6]))
    assert nb == pytest.approx([0.2, 8 / 15, 0.1])
    assert treat_all_benefit(0.6, np.array([0.25]))[0] == pytest.approx(0.6 - 0.4 / 3)
    preds = pd.DataFrame({"variant": "m", "fold": 0, "probability": p, "label": y})
    curves = decision_curves(preds, ["m"], np.array([0.25, 0.5]))
    by = curves.set_index(["curve", "threshold"])["net_benefit"]
    assert by[("m", 0.25)] == pytest.approx(8 / 15)
    assert by[("treat all", 0.5)] == pytest.approx(0.6 - 0.4)
    assert by[("treat none", 0.5)] == 0.0
    with pytest.raises(ValueError, match="strictly between"):
        net_benefit(y, p, np.array([1.0]))


def test_calibration_slope_and_intercept() -> None:
    rng = np.random.default_rng(3)
    true = expit(rng.normal(-0.5, 1.5, 20000))
    y = rng.random(20000) < true
    fit = recalibrate(y, true)  # perfectly calibrated
    assert fit.slope == pytest.approx(1.0, abs=0.06)
    assert fit.intercept == pytest.approx(0.0, abs=0.06)
    assert fit.calibration_in_the_large == pytest.approx(0.0, abs=0.06)
    over = recalibrate(y, expit(2 * logit(true)))  # over-confident: too extreme
    assert over.slope == pytest.approx(0.5, abs=0.05) and over.slope < 1
    assert recalibrate(y, expit(0.5 * logit(true))).slope > 1  # too timid
    # the same maximum-likelihood fit as an unpenalised logistic regression
    x = logit(np.clip(expit(2 * logit(true)), 1e-6, 1 - 1e-6))[:, None]
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x, y)
    assert over.slope == pytest.approx(lr.coef_[0, 0], rel=1e-4)
    assert over.intercept == pytest.approx(lr.intercept_[0], abs=1e-4)
    assert np.isnan(recalibrate(np.zeros(10), np.full(10, 0.3)).slope)  # one class


def test_calibration_bins_hold_ten_patients(built: tuple[Path, Path]) -> None:
    bins = calibration_bins(np.arange(95) % 2, np.linspace(0, 1, 95))
    assert len(bins) == 9 and bins["n"].min() >= 10 and bins["n"].sum() == 95
    assert len(calibration_bins(np.arange(7) % 2, np.linspace(0, 1, 7))) == 1
    _, out = built
    cal = pd.read_csv(out / "calibration.csv", dtype={"fold": str})
    assert set(cal.loc[cal["fold"] == "pooled", "variant"]) == set(VARIANTS)
    assert len(cal) == len(VARIANTS) * (N_FOLDS + 1)
    pooled = cal[cal["fold"] == "pooled"]
    assert np.isfinite(pooled["slope"]).all() and np.isfinite(pooled["intercept"]).all()
    # predictions that separate the classes have no maximum-likelihood fit: NaN, not a guess
    assert np.isnan(recalibrate([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]).slope)


def test_paired_ttest_equals_scipy_on_fold_aucs(built: tuple[Path, Path]) -> None:
    root, out = built
    metrics = collect_metrics(sorted((root / "models").glob("*/fold*/metrics.json")))
    tests = pd.read_csv(out / "paired_tests.csv").set_index("other")
    for other in ("base1", "logreg"):
        auc = metrics.assign(variant=metrics["variant"].astype(str)).set_index(
            ["variant", "fold"])["auc"]
        ref = [auc[("mmfusion", k)] for k in range(N_FOLDS)]
        oth = [auc[(other, k)] for k in range(N_FOLDS)]
        expected = ttest_rel(ref, oth)
        assert tests.loc[other, "ttest_t"] == pytest.approx(expected.statistic, rel=1e-5)
        assert tests.loc[other, "ttest_p_value"] == pytest.approx(expected.pvalue, rel=1e-5)
        assert tests.loc[other, "ttest_n_folds"] == N_FOLDS
        assert np.isfinite(tests.loc[other, "p_value"])  # DeLong beside it
    # folds where an AUC is undefined are left out of the pairs
    m = pd.DataFrame({"variant": ["mmfusion"] * 3 + ["b"] * 3, "fold": [0, 1, 2] * 2,
                      "auc": [0.8, 0.7, np.nan, 0.6, 0.65, 0.5]})
    t = fold_ttests(m, "mmfusion").iloc[0]
    assert t["ttest_n_folds"] == 2
    assert t["ttest_p_value"] == pytest.approx(ttest_rel([0.8, 0.7], [0.6, 0.65]).pvalue)


def test_confusion_counts_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.5, 0.5, 0.1, 0.7, 0.2])
    # >= 0.5 positive: 0.9(TP) 0.4(FN) 0.5(TP) 0.5(FP) 0.1(TN) 0.7(FP) 0.2(TN)
    assert confusion_counts(y, p, 0.5) == {"tp": 2, "fp": 2, "tn": 2, "fn": 1}
    assert confusion_counts(y, p, 0.8) == {"tp": 1, "fp": 0, "tn": 4, "fn": 2}
    preds = pd.DataFrame({"variant": "m", "fold": [0] * 4 + [1] * 3, "probability": p,
                          "label": y})
    thresholds = pd.DataFrame({"variant": ["m", "m"], "fold": [0, 1], "threshold": [0.8, 0.3]})
    table = fold_threshold_table(preds, thresholds).set_index("fold")
    # fold 0 (0.9/1, 0.4/1, 0.5/1, 0.5/0) at 0.8: TP 1, FN 2, TN 1
    assert table.loc[0, ["tp", "fp", "tn", "fn"]].tolist() == [1, 0, 1, 2]
    # fold 1 (0.1/0, 0.7/0, 0.2/0) at 0.3: FP 1, TN 2
    assert table.loc[1, ["tp", "fp", "tn", "fn"]].tolist() == [0, 1, 2, 0]
    summed = confusion_table(table.reset_index(), ["m"]).set_index("threshold")
    assert summed.loc["validation", ["tp", "fp", "tn", "fn"]].tolist() == [1, 1, 3, 2]
    assert summed.loc["0.5", ["tp", "fp", "tn", "fn"]].tolist() == [2, 2, 2, 1]
    assert summed.loc["0.5", "recall"] == pytest.approx(2 / 3)


def test_model_card_has_exclusions_and_no_path_or_patient(built: tuple[Path, Path]) -> None:
    root, out = built
    card = (out / "model_card.md").read_text()
    assert "Excluded: **4** patients" in card
    assert "| convert | CT series has a missing slice | 2 |" in card
    assert "| cohort | no label (lnm missing) | 1 |" in card
    assert "Included: **90** patients" in card
    assert "/secret" not in card and str(root) not in card
    assert not re.search(r"(?<![\w.])/[A-Za-z]", card), "an absolute path in the card"
    assert not re.search(r"EXC-\d|PAT-\d", card), "a patient identifier in the card"
    assert "`dicom`" in card and "`clinical.csv`" in card and "resnet_10.pth" in card
    for item in ("Data source", "Outcome", "Predictors", "Sample size and events per fold",
                 "Missing data", "Software", "Intended use"):
        assert f"## {item}" in card, item
    assert "WARNING: SYNTHETIC" not in card  # a real cohort here
    counts = exclusion_counts(root / "qc" / "exclusions.tsv")
    assert counts["n"].sum() == 4


def test_synthetic_run_says_so_at_the_top(tmp_path: Path) -> None:
    files = _write_run(tmp_path)
    config = yaml.safe_load(files["config"].read_text())
    config["cohort"]["synthetic"] = True
    files["config"].write_text(yaml.safe_dump(config))
    out = tmp_path / "report"
    assert main(["report", "--models-dir", str(files["models"]), "--out", str(out),
                 "--config", str(files["config"])]) == 0
    card = (out / "model_card.md").read_text()
    assert "WARNING: SYNTHETIC DEMO COHORT" in card.split("## ")[0]
    assert "SYNTHETIC DEMO COHORT" in (out / "summary.md").read_text().split("## ")[0]
    assert "Exclusions: not given" in card  # optional cohort files


def test_front_page_fragment_is_valid_rst(built: tuple[Path, Path]) -> None:
    from docutils.core import publish_parts

    _, out = built
    rst = (out / "front_page.rst").read_text()
    html = publish_parts(rst, writer="html",
                         settings_overrides={"halt_level": 2, "report_level": 5})["body"]
    for text in ("Cohort", "90 patients included", "t-test p", "Calibration",
                 "Decision curve analysis", "mmfusion"):
        assert text in html, text
    summary = (out / "summary.md").read_text()
    assert "DeLong p" in summary and "t-test p" in summary and "at 0.5" in summary


def test_report_rule_shows_every_figure_with_a_caption() -> None:
    rule = (REPO / "workflow" / "rules" / "report.smk").read_text()
    for name in FIGURES:
        assert f"figures/{name}" in rule, name
    for caption in re.findall(r'caption="\.\./report/([\w.]+)"', rule):
        assert (REPO / "workflow" / "report" / caption).is_file(), caption
    for name in ("model_card.md", "decision_curve.csv", "calibration.csv",
                 "--exclusions", "--spec", "--folds", "--table"):
        assert name in rule, name
    snakefile = (REPO / "Snakefile").read_text()
    assert 'report: "workflow/report/workflow.rst"' in snakefile
    front = (REPO / "workflow" / "report" / "workflow.rst").read_text()
    assert "front_page.rst" in front and 'snakemake.config["cohort"]["synthetic"]' in front


def test_pooled_auc_unchanged_by_the_new_tables(built: tuple[Path, Path]) -> None:
    root, out = built
    preds = pd.concat(pd.read_csv(p) for p in (root / "models").glob("*/fold*/predictions.csv"))
    pooled = pd.read_csv(out / "pooled_auc.csv").set_index("variant")
    g = preds[preds["variant"] == "mmfusion"]
    assert pooled.loc["mmfusion", "pooled_auc"] == pytest.approx(
        roc_auc_score(g["label"], g["probability"]))
