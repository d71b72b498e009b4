"""One fold from the cohort files: in-fold preprocessing, then a deep variant or a baseline.

Reads `cohort/table.tsv`, `feature_spec.json`, `folds.tsv` and the patch cache (or, with
a frozen backbone, the feature cache of `mmfusion.train.features`); fits
`FoldPreprocessor` on the fold's training rows only and transforms train/val/test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmfusion.cohort.merge import read_cohort_table
from mmfusion.cohort.preprocess import FoldPreprocessor, fold_frames
from mmfusion.errors import ConfigError
from mmfusion.io import write_text_atomic
from mmfusion.model.baselines import fit_predict_baseline
from mmfusion.train.dataset import SplitData, open_patch_cache, select_rows
from mmfusion.train.features import open_feature_cache
from mmfusion.train.metrics import binary_metrics, json_safe, youden_threshold
from mmfusion.train.recalibration import Recalibrator, fit_recalibrator
from mmfusion.train.trained_fold import PREPROCESSOR_FILE, SCORING_FILE

SPLITS = ("train", "val", "test")


PREDICTION_COLUMNS = ["patient_id", "fold", "variant", "probability", "uncertainty", "label",
                      "probability_raw"]
BASELINE_FILE = "baseline.npz"  # a baseline's fitted parameters (np.savez, no pickle)
SCORING_FORMAT = "mmfusion.fold_scoring"


class FoldSplits(dict):
    """`{"train", "val", "test"}` -> `SplitData`, carrying the in-fold `preprocessor`
    (fitted on the training rows) so that `fit_fold` can write it beside the model."""

    preprocessor: FoldPreprocessor | None = None


def write_preprocessor(pre: FoldPreprocessor, out_dir: str | Path) -> None:
    """`preprocessor.json` (the fitted state as JSON, `FoldPreprocessor.from_dict`)."""
    write_text_atomic(Path(out_dir) / PREPROCESSOR_FILE,
                      json.dumps(pre.to_dict(), indent=1, allow_nan=False) + "\n")


def write_scoring(out_dir: str | Path, scoring: Mapping[str, Any]) -> None:
    """`scoring.json`: what scoring a new patient with this fold's model needs besides
    the weights and the preprocessor (threshold, temperature, recalibration, settings)."""
    record = {"format": SCORING_FORMAT, "version": 1, **scoring}
    write_text_atomic(Path(out_dir) / SCORING_FILE,
                      json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n")


def _fold_preprocessing(table_tsv: str | Path, spec_json: str | Path, folds_tsv: str | Path,
                        fold: int, preprocess: Mapping[str, Any] | None
                        ) -> tuple[FoldPreprocessor, dict[str, list[str]],
                                   dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    from mmfusion.cohort.folds import read_folds

    spec = json.loads(Path(spec_json).read_text())
    table = read_cohort_table(table_tsv, spec)
    frames = fold_frames(table, read_folds(folds_tsv), fold)
    pre = FoldPreprocessor(spec, preprocess).fit(frames["train"])  # training rows only
    ids = {s: frames[s]["patient_id"].astype(str).tolist() for s in SPLITS}
    tables = {s: pre.transform(frames[s]) for s in SPLITS}
    labels = {s: frames[s]["label"].to_numpy().astype(np.int64) for s in SPLITS}
    return pre, ids, tables, labels


def load_fold_tables(table_tsv: str | Path, spec_json: str | Path, folds_tsv: str | Path,
                     fold: int, preprocess: Mapping[str, Any] | None
                     ) -> tuple[dict[str, list[str]], dict[str, dict[str, np.ndarray]],
                                dict[str, np.ndarray]]:
    """Patient IDs, preprocessed tabular arrays and labels per split of `fold`."""
    _, ids, tables, labels = _fold_preprocessing(table_tsv, spec_json, folds_tsv, fold,
                                                 preprocess)
    return ids, tables, labels


def load_fold(table_tsv: str | Path, spec_json: str | Path, folds_tsv: str | Path,
              cache_dir: str | Path | None, fold: int, preprocess: Mapping[str, Any] | None,
              features: str | Path | None = None) -> FoldSplits:
    """`SplitData` for train/val/test of `fold`, patches memory-mapped from the cache, or
    (frozen-backbone mode, `features` given) the backbone feature maps from that feature
    cache, which then replaces the patch cache. The fitted preprocessor rides along
    (`FoldSplits.preprocessor`)."""
    pre, ids, tables, labels = _fold_preprocessing(table_tsv, spec_json, folds_tsv, fold,
                                                   preprocess)
    if features is not None:
        cache_ids, arrays = open_feature_cache(features)
    elif cache_dir is not None:
        cache_ids, arrays = open_patch_cache(cache_dir)
    else:
        raise ConfigError("deep variants need the patch cache or the feature cache",
                          fix="pass --cache (or --features with model.freeze_backbone)")
    patches = {k: v for k, v in arrays.items() if k != "node_present"}
    splits = FoldSplits({s: SplitData(ids[s], patches, arrays["node_present"], tables[s],
                                      labels[s], select_rows(cache_ids, ids[s]))
                         for s in SPLITS})
    splits.preprocessor = pre
    return splits


def write_predictions(path: str | Path, patient_ids: list[str], labels: np.ndarray,
                      fold: int, variant: str, probability: np.ndarray,
                      uncertainty: np.ndarray, probability_raw: np.ndarray) -> None:
    """`predictions.csv` / `val_predictions.csv` of a fold (PREDICTION_COLUMNS):
    `probability` recalibrated (the one scored), `probability_raw` the model's own; 8
    decimals, as `mmfusion predict` writes a fold's probabilities."""
    import csv

    from mmfusion.io import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(PREDICTION_COLUMNS)
        for row in zip(patient_ids, probability, uncertainty, labels, probability_raw,
                       strict=True):
            pid, p, u, y, raw = row
            writer.writerow([pid, fold, variant, f"{p:.8f}", f"{u:.8f}", int(y),
                             f"{raw:.8f}"])


def run_baseline_fold(name: str, table_tsv: str | Path, spec_json: str | Path,
                      folds_tsv: str | Path, fold: int, preprocess: Mapping[str, Any] | None,
                      out_dir: str | Path, seed: int = 0,
                      recalibration: str | None = None) -> dict[str, Any]:
    """Fit baseline `name` on train; recalibration (`train.recalibration`, None = the
    schema default) and threshold on val; score test once. Writes the same
    `predictions.csv` / `metrics.json` / `scoring.json` as the deep variants."""
    from mmfusion.settings import section_defaults

    pre, ids, tables, labels = _fold_preprocessing(table_tsv, spec_json, folds_tsv, fold,
                                                   preprocess)
    fitted: list[Any] = []
    raw = fit_predict_baseline(name, tables["train"], labels["train"],
                               {"val": tables["val"], "test": tables["test"]}, seed,
                               fitted=fitted)
    method = recalibration or section_defaults("train")["recalibration"]
    recal = fit_recalibrator(raw["val"], labels["val"], method)  # validation only
    probs = {s: recal.apply(raw[s]) for s in ("val", "test")}
    threshold = youden_threshold(labels["val"], probs["val"])
    out = Path(out_dir)
    _export_baseline(fitted[0], name, fold, seed, threshold, recal, pre, tables, raw, out)
    for split, fname in (("val", "val_predictions.csv"), ("test", "predictions.csv")):
        write_predictions(out / fname, ids[split], labels[split], fold, name, probs[split],
                          np.zeros(len(ids[split])), raw[split])
    metrics = {"variant": name, "fold": fold, "threshold": threshold,
               "recalibration": recal.to_dict(),
               "test": binary_metrics(labels["test"], probs["test"], threshold),
               "val": binary_metrics(labels["val"], probs["val"], threshold),
               "test_brier_raw": _brier(raw["test"], labels["test"]),
               "n_train": len(ids["train"]), "settings": {"preprocess": dict(preprocess or {}),
                                                          "seed": seed,
                                                          "recalibration": method}}
    write_text_atomic(out / "metrics.json",
                      json.dumps(json_safe(metrics), indent=1, allow_nan=False) + "\n")
    return metrics


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - y) ** 2)) if len(y) else float("nan")


def _export_baseline(model: Any, name: str, fold: int, seed: int, threshold: float,
                     recal: Recalibrator, pre: FoldPreprocessor,
                     tables: Mapping[str, Mapping[str, np.ndarray]],
                     raw: Mapping[str, np.ndarray], out: Path) -> None:
    """The fitted baseline as arrays (`baseline.npz`), its preprocessor and scoring record
    (threshold and recalibration); the arrays are scored once on val and test to record
    how exactly they reproduce the fitted model's raw probabilities
    (`export_max_abs_diff`, 0.0 expected)."""
    import sklearn

    from mmfusion.io import atomic_path
    from mmfusion.model.baselines import baseline_parameters, probabilities_from_parameters

    params = baseline_parameters(model)
    with atomic_path(out / BASELINE_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **params)
    diff = max(float(np.max(np.abs(probabilities_from_parameters(params, tables[s])
                                    - raw[s]), initial=0.0)) for s in ("val", "test"))
    write_preprocessor(pre, out)
    write_scoring(out, {"variant": name, "fold": fold, "kind": "baseline",
                        "threshold": threshold, "temperature": None,
                        "recalibration": recal.to_dict(), "seed": seed,
                        "parameters": BASELINE_FILE, "export_max_abs_diff": diff,
                        "sklearn": sklearn.__version__})
