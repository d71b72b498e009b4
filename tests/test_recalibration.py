"""Validation-fitted recalibration: the fit itself, the folds' outputs, and `predict`.

The map p' = sigmoid(a logit(p) + b) is fitted on each fold's validation split for every
variant (deep and baseline); the threshold is chosen on the mapped validation
probabilities, test is scored with them, and a bundle applies the same map to new patients.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from mmfusion.errors import ConfigError
from mmfusion.train.metrics import youden_threshold
from mmfusion.train.recalibration import (
    MIN_PER_CLASS,
    SLOPE_MIN,
    Recalibrator,
    fit_recalibrator,
)
from tests.train_fixtures import write_random_patches, write_tables

HAVE_DGL = importlib.util.find_spec("dgl") is not None


def _draw(n: int, slope: float, intercept: float, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities p = sigmoid(z) and labels drawn from sigmoid(slope z + intercept)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < expit(slope * z + intercept)).astype(int)
    return expit(z), y


# ---------------------------------------------------------------- the fit


@pytest.mark.parametrize(("slope", "intercept"), [(0.5, -1.0), (2.0, 0.5), (1.0, -2.5)])
def test_platt_recovers_the_generating_slope_and_intercept(slope, intercept):
    p, y = _draw(40_000, slope, intercept)
    recal = fit_recalibrator(p, y, "platt")
    assert recal.fitted and recal.method == "platt" and recal.note == ""
    assert recal.slope == pytest.approx(slope, abs=0.05)
    assert recal.intercept == pytest.approx(intercept, abs=0.05)
    np.testing.assert_allclose(recal.apply(p), expit(recal.slope * np.log(p / (1 - p))
                                                     + recal.intercept), rtol=1e-9)


def test_temperature_fits_the_slope_only():
    p, y = _draw(40_000, 0.4, 0.0, seed=1)
    recal = fit_recalibrator(p, y, "temperature")
    assert recal.fitted and recal.intercept == 0.0
    assert recal.slope == pytest.approx(0.4, abs=0.03)


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_perfectly_calibrated_probabilities_stay_nearly_unchanged(method):
    p, y = _draw(40_000, 1.0, 0.0, seed=2)
    recal = fit_recalibrator(p, y, method)
    assert recal.slope == pytest.approx(1.0, abs=0.04)
    assert recal.intercept == pytest.approx(0.0, abs=0.04)
    assert np.max(np.abs(recal.apply(p) - p)) < 0.02


@pytest.mark.parametrize(("name", "slope", "intercept"), [
    ("over-confident", 0.33, 0.0), ("under-confident", 3.0, 0.0),
    ("near 0 while a third is positive", 1.0, 3.0), ("too high", 1.0, -2.0)])
def test_validation_brier_drops_for_miscalibrated_probabilities(name, slope, intercept):
    """On a validation split of 200 the fit lowers the validation Brier every time; on a
    demo-sized split (16) on average (Platt's smoothed targets shrink a small split's fit,
    which can cost a little validation Brier when that split happens to separate well)."""
    for seed in range(5):
        p, y = _draw(200, slope, intercept, seed)
        recal = fit_recalibrator(p, y, "platt")
        assert recal.val_brier < recal.val_brier_raw, (name, seed)
        assert recal.val_brier == pytest.approx(np.mean((recal.apply(p) - y) ** 2))
        assert recal.val_brier_raw == pytest.approx(np.mean((p - y) ** 2))
    small = [fit_recalibrator(*_draw(16, slope, intercept, seed), "platt")
             for seed in range(40)]
    assert np.mean([r.val_brier - r.val_brier_raw for r in small if r.fitted]) < 0, name


def test_calibrated_validation_brier_barely_moves():
    for seed in range(5):
        recal = fit_recalibrator(*_draw(200, 1.0, 0.0, seed), "platt")
        assert recal.val_brier <= recal.val_brier_raw + 0.005


def test_degenerate_validation_splits_give_the_identity_and_say_why():
    p = np.linspace(0.1, 0.9, 10)
    one_class = fit_recalibrator(p, np.zeros(10, int), "platt")
    assert not one_class.fitted and one_class.is_identity
    assert "0 positive and 10 negative" in one_class.note
    few = np.r_[np.zeros(8, int), np.ones(MIN_PER_CLASS - 1, int)]
    tiny = fit_recalibrator(np.linspace(0.1, 0.9, len(few)), few, "platt")
    assert not tiny.fitted and f"fewer than {MIN_PER_CLASS} of a class" in tiny.note
    empty = fit_recalibrator(np.zeros(0), np.zeros(0, int), "platt")
    assert not empty.fitted and empty.n_val == 0
    y = np.array([0, 1] * 5)
    nan = fit_recalibrator(np.r_[p[:9], np.nan], y, "platt")
    assert not nan.fitted and "not finite" in nan.note
    off = fit_recalibrator(p, y, "none")
    assert not off.fitted and off.method == "none" and off.val_brier == off.val_brier_raw
    for recal in (one_class, tiny, empty, nan, off):
        raw = np.array([0.0, 1e-9, 0.3, 1.0])
        np.testing.assert_array_equal(recal.apply(raw), raw)  # untouched, not even clipped
    with pytest.raises(ConfigError, match="unknown train.recalibration 'isotonic'"):
        fit_recalibrator(p, y, "isotonic")
    with pytest.raises(ValueError, match="10 probabilities for 9 labels"):
        fit_recalibrator(p, y[:9], "platt")


def test_separated_or_reversed_validation_keeps_a_finite_increasing_map():
    y = np.array([0] * 5 + [1] * 5)
    separated = fit_recalibrator(np.r_[np.full(5, 1e-12), np.full(5, 1 - 1e-12)], y, "platt")
    assert separated.fitted and np.isfinite([separated.slope, separated.intercept]).all()
    out = separated.apply(np.array([0.0, 1.0]))  # logits clipped: finite, inside (0, 1)
    assert 0 < out[0] < 0.5 < out[1] < 1
    reversed_ = fit_recalibrator(np.linspace(0.9, 0.1, 10), y, "platt")  # ranks backwards
    assert reversed_.slope == SLOPE_MIN and "no better than chance" in reversed_.note
    grid = np.linspace(0.01, 0.99, 99)
    assert np.all(np.diff(reversed_.apply(grid)) > 0)  # the ranking is never reversed


def test_the_fit_is_deterministic_and_round_trips_through_json():
    p, y = _draw(60, 0.5, -1.0, seed=4)
    a, b = fit_recalibrator(p, y, "platt"), fit_recalibrator(p, y, "platt")
    assert a == b
    again = Recalibrator.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again == a
    np.testing.assert_array_equal(again.apply(p), a.apply(p))
    unfitted = fit_recalibrator(np.zeros(0), np.zeros(0, int), "platt")  # NaN Briers
    from mmfusion.train.metrics import json_safe

    back = Recalibrator.from_dict(json.loads(json.dumps(json_safe(unfitted.to_dict()))))
    assert back.is_identity and back.note == unfitted.note
    old = Recalibrator.from_dict(None)  # a fold scored before recalibration existed
    assert old.is_identity and not old.fitted


# ---------------------------------------------------------------- folds and predict

N, N_TRAIN, N_VAL = 40, 16, 12  # fold 0: 16 train, 12 val (6 + 6), 12 test


def _cohort(root: Path, patches: bool = False) -> list[str]:
    ids, rng = write_tables(root, N, N_TRAIN, N_VAL)
    if patches:
        write_random_patches(root, ids, rng)
    return ids


def _assert_mapped(actual: np.ndarray, raw: np.ndarray, recal: Recalibrator,
                   err_msg: str) -> None:
    """`actual` == recal.apply(raw) up to the 6 decimals written (float32 differences of
    the raw mean too), scaled by the map's derivative there: a steep map (slope up to
    SLOPE_MAX) magnifies the raw value's rounding."""
    raw = np.clip(np.asarray(raw, float), 1e-6, 1 - 1e-6)
    expected = recal.apply(raw)
    slope = recal.slope * expected * (1 - expected) / (raw * (1 - raw))
    np.testing.assert_array_less(np.abs(np.asarray(actual, float) - expected),
                                 1e-6 + 2e-6 * np.maximum(slope, 1.0), err_msg=err_msg)


def _files(root: Path) -> tuple[Path, Path, Path]:
    return root / "table.tsv", root / "spec.json", root / "folds.tsv"


def _check_fold_outputs(out: Path) -> dict:
    """metrics.json and scoring.json carry the same fitted map; the predictions are that
    map of the raw ones; the threshold is Youden's on the mapped validation probabilities."""
    metrics = json.loads((out / "metrics.json").read_text())
    scoring = json.loads((out / "scoring.json").read_text())
    assert metrics["recalibration"] == scoring["recalibration"]
    recal = Recalibrator.from_dict(scoring["recalibration"])
    assert recal.fitted and recal.method == "platt" and not recal.is_identity
    assert recal.n_val == N_VAL and recal.n_val_positive == N_VAL // 2
    for name in ("val_predictions.csv", "predictions.csv"):
        pred = pd.read_csv(out / name)
        assert list(pred.columns) == ["patient_id", "fold", "variant", "probability",
                                      "uncertainty", "label", "probability_raw"]
        _assert_mapped(pred["probability"], pred["probability_raw"], recal, name)
    val = pd.read_csv(out / "val_predictions.csv")
    assert recal.val_brier == pytest.approx(metrics["val"]["brier"], abs=1e-6)
    assert youden_threshold(val["label"], val["probability"]) == pytest.approx(
        metrics["threshold"], abs=2e-6)
    return metrics


def _bundle(out: Path, variant: str, spec: Path):
    from mmfusion.predict.bundle import Bundle, FoldModel

    fold = FoldModel(fold=0, folder=out,
                     scoring=json.loads((out / "scoring.json").read_text()),
                     preprocessor=json.loads((out / "preprocessor.json").read_text()))
    return Bundle(path=out, info={"variant": variant}, settings={},
                  spec=json.loads(spec.read_text()), versions={}, folds=[fold])


def _predict_matches_fold(root: Path, out: Path, variant: str, device: str | None = None,
                          graph_backend: str | None = None) -> None:
    """`mmfusion predict`'s scoring (`ensemble.score`) of the fold's own validation and
    test patients, in reverse order, gives the fold's recalibrated (and raw) probabilities
    to 1e-6 (8 decimals are written)."""
    from mmfusion.cohort.merge import read_cohort_table
    from mmfusion.predict.ensemble import score

    table, spec, _ = _files(root)
    bundle = _bundle(out, variant, spec)
    cohort = read_cohort_table(table, bundle.spec)
    for name in ("val_predictions.csv", "predictions.csv"):
        fold_pred = pd.read_csv(out / name, dtype={"patient_id": str})
        fold_pred = fold_pred.iloc[::-1].reset_index(drop=True)  # another order
        frame = cohort.set_index("patient_id").loc[fold_pred["patient_id"]].reset_index()
        scores = score(bundle, frame, [root / "patients" / p for p in frame["patient_id"]],
                       device, graph_backend)
        np.testing.assert_allclose(scores.fold_probability_raw[0],
                                   fold_pred["probability_raw"], rtol=0, atol=1e-6,
                                   err_msg=name)
        recal = Recalibrator.from_dict(bundle.folds[0].scoring["recalibration"])
        _assert_mapped(scores.fold_probability[0], fold_pred["probability_raw"], recal, name)
        np.testing.assert_allclose(scores.fold_probability[0], fold_pred["probability"],
                                   rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(scores.probability, scores.fold_probability[0])
        assert scores.threshold == pytest.approx(bundle.folds[0].scoring["threshold"])


@pytest.mark.parametrize("name", ["logreg", "gbm"])
def test_baseline_fold_is_recalibrated_and_predict_reproduces_it(tmp_path, name):
    from mmfusion.train.fold import run_baseline_fold

    _cohort(tmp_path)
    out = tmp_path / name
    out.mkdir()
    run_baseline_fold(name, *_files(tmp_path), 0, {}, out)  # schema default: platt
    metrics = _check_fold_outputs(out)
    assert metrics["settings"]["recalibration"] == "platt"
    _predict_matches_fold(tmp_path, out, name)
    off = tmp_path / f"{name}_off"
    off.mkdir()
    run_baseline_fold(name, *_files(tmp_path), 0, {}, off, recalibration="none")
    raw = pd.read_csv(off / "predictions.csv")
    assert (raw["probability"] == raw["probability_raw"]).all()
    np.testing.assert_allclose(raw["probability_raw"],
                               pd.read_csv(out / "predictions.csv")["probability_raw"])


def test_baseline_test_labels_do_not_steer_recalibration_threshold_or_scores(tmp_path):
    """Rolling the test patients' labels (same counts, every label flipped here) leaves
    the fitted map, the threshold, the validation outputs and the test probabilities
    identical; only the test metrics change."""
    from mmfusion.train.fold import run_baseline_fold

    _cohort(tmp_path)
    table, spec, folds = _files(tmp_path)
    runs = {}
    for tag in ("a", "b"):
        if tag == "b":
            frame = pd.read_csv(table, sep="\t")
            test = pd.read_csv(folds, sep="\t")["split"].eq("test").to_numpy()
            frame.loc[test, "label"] = np.roll(frame.loc[test, "label"].to_numpy(), 1)
            frame.to_csv(table, sep="\t", index=False)
        for name in ("logreg", "gbm"):
            out = tmp_path / tag / name
            out.mkdir(parents=True)
            runs[tag, name] = run_baseline_fold(name, table, spec, folds, 0, {}, out)
    for name in ("logreg", "gbm"):
        a, b = runs["a", name], runs["b", name]
        assert a["recalibration"] == b["recalibration"] and a["recalibration"]["fitted"]
        assert a["threshold"] == b["threshold"] and a["val"] == b["val"]
        assert a["test"] != b["test"]  # the labels did reach the test metrics
        for file in ("val_predictions.csv", "predictions.csv", "scoring.json"):
            left, right = (tmp_path / t / name / file for t in ("a", "b"))
            if file == "predictions.csv":
                pd.testing.assert_frame_equal(pd.read_csv(left).drop(columns="label"),
                                              pd.read_csv(right).drop(columns="label"))
            else:
                assert left.read_bytes() == right.read_bytes(), (name, file)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("variant", ["base1", "mmfusion"])
def test_deep_fold_is_recalibrated_and_predict_reproduces_it(tmp_path, variant):
    """A deep variant's fold (mmfusion: temperature of the `difference` mapping, then the
    map on the mean over samples) and `predict`'s scoring of the same patients agree."""
    from mmfusion.model.mmfusion import ModelConfig
    from mmfusion.train.augment import AugmentSettings
    from mmfusion.train.config import TrainConfig
    from mmfusion.train.dataset import build_patch_cache
    from mmfusion.train.fold import load_fold
    from mmfusion.train.loop import fit_fold
    from tests.test_train_loop import TINY

    ids = _cohort(tmp_path, patches=True)
    build_patch_cache(ids, [tmp_path / "patients" / p / "patches.npz" for p in ids],
                      tmp_path / "cache")
    splits = load_fold(*_files(tmp_path), tmp_path / "cache", 0, {})
    model = ModelConfig(variant=variant, probability="difference", **TINY)
    train = TrainConfig(epochs=3, warmup_epochs=1, batch_size=5, lr=3e-3, weight_decay=0.0,
                        min_lr=1e-3, restart_epoch=3, seed=7, device="cpu", progress=False,
                        augment=AugmentSettings(flip=0, noise=0, bias_field=0, motion=0))
    out = tmp_path / variant
    fit_fold(model, train, splits, out)
    metrics = _check_fold_outputs(out)
    assert (metrics["temperature"] is not None) == (variant == "mmfusion")
    # 12 validation and 12 test patients: 3 batches of at most 5 each, scored again in
    # reverse order (other batches) by predict
    _predict_matches_fold(tmp_path, out, variant, "cpu")
    if variant == "mmfusion":  # trained with DGL's GATConv (where DGL is), scored by the
        # torch backend
        assert metrics["graph_backend"] == ("dgl" if HAVE_DGL else "torch")
        _predict_matches_fold(tmp_path, out, variant, "cpu", graph_backend="torch")


def test_the_train_setting_reaches_baselines_through_the_cli(tmp_path, capsys):
    from mmfusion.cli import main

    _cohort(tmp_path)
    table, spec, folds = _files(tmp_path)
    common = ["train", "fold", "--table", str(table), "--spec", str(spec), "--folds",
              str(folds), "--fold", "0", "--variant", "logreg"]
    for method in ("temperature", "none"):
        out = tmp_path / method
        assert main([*common, "--train-settings", json.dumps({"recalibration": method}),
                     "--out", str(out)]) == 0
        recal = json.loads((out / "scoring.json").read_text())["recalibration"]
        assert recal["method"] == method and recal["fitted"] == (method != "none")
        assert method == "none" or recal["intercept"] == 0.0
    assert main([*common, "--train-settings", json.dumps({"recalibration": "isotonic"}),
                 "--out", str(tmp_path / "bad")]) == 1
    assert "unknown train.recalibration 'isotonic'" in capsys.readouterr().err


def test_predict_maps_each_folds_mean_and_every_sample():
    """A fold's probability is its map of the mean over samples (as the fold scored its
    test patients); the spread is over the mapped samples; old bundles: the identity."""
    from mmfusion.predict.bundle import FoldModel
    from mmfusion.predict.ensemble import combine, recalibrate

    raw = np.array([[0.2, 0.4, 0.6], [0.7, 0.8, 0.9]])
    recal = Recalibrator(method="platt", slope=2.0, intercept=-0.5, fitted=True)
    fold = FoldModel(0, Path("."), {"recalibration": recal.to_dict()}, {})
    p, samples = recalibrate(fold, raw.mean(axis=1), raw)
    np.testing.assert_allclose(p, recal.apply(raw.mean(axis=1)))
    np.testing.assert_allclose(samples, recal.apply(raw))
    assert not np.allclose(p, samples.mean(axis=1))  # the map of the mean, not the reverse
    old = FoldModel(1, Path("."), {}, {})  # scoring.json without `recalibration`
    p_old, samples_old = recalibrate(old, raw.mean(axis=1), raw)
    np.testing.assert_array_equal(p_old, raw.mean(axis=1))
    np.testing.assert_array_equal(samples_old, raw)
    probability, uncertainty, decision, threshold = combine([samples, samples_old],
                                                            [0.4, 0.6], [p, p_old])
    np.testing.assert_allclose(probability, (p + p_old) / 2)
    np.testing.assert_allclose(uncertainty, np.c_[samples, samples_old].std(axis=1))
    assert threshold == pytest.approx(0.5)
    assert decision.tolist() == (probability >= 0.5).astype(int).tolist()
