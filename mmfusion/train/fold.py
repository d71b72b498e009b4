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

SPLITS = ("train", "val", "test")


def load_fold_tables(table_tsv: str | Path, spec_json: str | Path, folds_tsv: str | Path,
                     fold: int, preprocess: Mapping[str, Any] | None
                     ) -> tuple[dict[str, list[str]], dict[str, dict[str, np.ndarray]],
                                dict[str, np.ndarray]]:
    """Patient IDs, preprocessed tabular arrays and labels per split of `fold`."""
    from mmfusion.cohort.folds import read_folds

    spec = json.loads(Path(spec_json).read_text())
    table = read_cohort_table(table_tsv, spec)
    frames = fold_frames(table, read_folds(folds_tsv), fold)
    pre = FoldPreprocessor(spec, preprocess).fit(frames["train"])  # training rows only
    ids = {s: frames[s]["patient_id"].astype(str).tolist() for s in SPLITS}
    tables = {s: pre.transform(frames[s]) for s in SPLITS}
    labels = {s: frames[s]["label"].to_numpy().astype(np.int64) for s in SPLITS}
    return ids, tables, labels


def load_fold(table_tsv: str | Path, spec_json: str | Path, folds_tsv: str | Path,
              cache_dir: str | Path | None, fold: int, preprocess: Mapping[str, Any] | None,
              features: str | Path | None = None) -> dict[str, SplitData]:
    """`SplitData` for train/val/test of `fold`, patches memory-mapped from the cache, or
    (frozen-backbone mode, `features` given) the backbone feature maps from that feature
    cache, which then replaces the patch cache."""
    ids, tables, labels = load_fold_tables(table_tsv, spec_json, folds_tsv, fold, preprocess)
    if features is not None:
        cache_ids, arrays = open_feature_cache(features)
    elif cache_dir is not None:
        cache_ids, arrays = open_patch_cache(cache_dir)
    else:
        raise ConfigError("deep variants need the patch cache or the feature cache",
                          fix="pass --cache (or --features with model.freeze_backbone)")
    patches = {k: v for k, v in arrays.items() if k != "node_present"}
    return {s: SplitData(ids[s], patches, arrays["node_present"], tables[s], labels[s],
                         select_rows(cache_ids, ids[s])) for s in SPLITS}


def run_baseline_fold(name: str, table_tsv: str | Path, spec_json: str | Path,
                      folds_tsv: str | Path, fold: int, preprocess: Mapping[str, Any] | None,
                      out_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Fit baseline `name` on train; threshold on val; score test once. Writes the
    same `predictions.csv` / `metrics.json` as the deep variants."""
    import pandas as pd

    from mmfusion.io import atomic_path

    ids, tables, labels = load_fold_tables(table_tsv, spec_json, folds_tsv, fold, preprocess)
    probs = fit_predict_baseline(name, tables["train"], labels["train"],
                                 {"val": tables["val"], "test": tables["test"]}, seed)
    threshold = youden_threshold(labels["val"], probs["val"])
    out = Path(out_dir)
    for split, fname in (("val", "val_predictions.csv"), ("test", "predictions.csv")):
        frame = pd.DataFrame({"patient_id": ids[split], "fold": fold, "variant": name,
                              "probability": np.round(probs[split], 6), "uncertainty": 0.0,
                              "label": labels[split]})
        with atomic_path(out / fname) as tmp:
            frame.to_csv(tmp, index=False)
    metrics = {"variant": name, "fold": fold, "threshold": threshold,
               "test": binary_metrics(labels["test"], probs["test"], threshold),
               "val": binary_metrics(labels["val"], probs["val"], threshold),
               "n_train": len(ids["train"]), "settings": {"preprocess": dict(preprocess or {}),
                                                          "seed": seed}}
    write_text_atomic(out / "metrics.json",
                      json.dumps(json_safe(metrics), indent=1, allow_nan=False) + "\n")
    return metrics
