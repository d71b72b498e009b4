"""Every fold's model scores every new patient; the folds form an ensemble.

A fold model gives each patient a row of raw probabilities: the per-sample probabilities
of the diffusion head (`mmfusion`: S reverse-process samples, each mapped with that fold's
temperature), else one probability. Each fold's validation-fitted recalibration
(`scoring.json` `recalibration`, `mmfusion.train.recalibration`; identity when absent) maps
the mean of that row to the fold's probability, exactly as the fold scored its own test
patients, and maps every sample for the spread. The ensemble (`combine`): probability =
mean over folds of each fold's recalibrated probability; uncertainty = standard deviation
of the recalibrated per-sample probabilities over all folds x samples (for one probability
per fold: the spread across folds); decision = probability >= the mean of the folds'
validation-chosen thresholds (chosen on recalibrated validation probabilities).

Deep models are rebuilt from `scoring.json` (model settings, tabular widths) and loaded
with `torch.load(weights_only=True)` (`mmfusion.train.trained_fold`) and scored by the one
scoring function of training (`mmfusion.train.scoring.score_split`, the fold's seed): a
fold model gives a patient the very probability that fold's own predictions hold, whatever
the batch, the order or the other patients scored with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmfusion.predict.bundle import Bundle
from mmfusion.train.recalibration import Recalibrator
from mmfusion.train.trained_fold import FoldModel, build_model, fold_tables

log = logging.getLogger(__name__)

CHUNK = 64  # patients whose patches are in memory at once


@dataclass
class Scores:
    """Per fold `(N, S)` recalibrated per-sample probabilities (S = 1 without diffusion),
    per fold `(N,)` recalibrated and raw probabilities, and the ensemble."""

    patients: list[str]
    per_fold: list[np.ndarray]
    probability: np.ndarray
    uncertainty: np.ndarray
    decision: np.ndarray
    threshold: float
    fold_probability: list[np.ndarray] = field(default_factory=list)
    fold_probability_raw: list[np.ndarray] = field(default_factory=list)


def recalibrate(fold: FoldModel, probability: np.ndarray, per_sample: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """A fold's raw probability `(N,)` (the mean over samples) and per-sample
    probabilities `(N, S)` -> (its recalibrated probability `(N,)`, exactly as the fold's
    own predictions; every sample mapped `(N, S)`)."""
    recal = Recalibrator.from_dict(fold.scoring.get("recalibration"))
    return (recal.apply(np.asarray(probability, dtype=np.float64)),
            recal.apply(np.asarray(per_sample, dtype=np.float64)))


def combine(per_fold: Sequence[np.ndarray], thresholds: Sequence[float],
            fold_probability: Sequence[np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(probability, uncertainty, decision, decision threshold) of the fold ensemble.
    `fold_probability`: each fold's probability `(N,)` (default: the mean of its row)."""
    if fold_probability is None:
        fold_probability = [np.asarray(p, float).mean(axis=1) for p in per_fold]
    fold_means = np.stack([np.asarray(p, float) for p in fold_probability])
    pooled = np.concatenate([np.asarray(p, float) for p in per_fold], axis=1)
    probability = fold_means.mean(axis=0)
    threshold = float(np.mean(thresholds))
    return probability, pooled.std(axis=1), (probability >= threshold).astype(int), threshold


def _baseline(fold: FoldModel, frame: pd.DataFrame) -> np.ndarray:
    from mmfusion.model.baselines import probabilities_from_parameters

    with np.load(fold.folder / fold.scoring["parameters"], allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files}
    return probabilities_from_parameters(params, fold_tables(fold, frame))


def _load_patches(folders: Sequence[Path]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from mmfusion.features.patches import load_patches

    loaded = [load_patches(f / "patches.npz") for f in folders]
    patches = {"tumour": np.stack([p.tumour for p in loaded])}
    for i in range(3):
        patches[f"node{i + 1}"] = np.stack([p.nodes[i] for p in loaded])
    return patches, np.stack([p.node_present for p in loaded]).astype(np.uint8)


def _deep(fold: FoldModel, model, frame: pd.DataFrame, folders: Sequence[Path],
          device) -> tuple[np.ndarray, np.ndarray]:
    """(probability `(N,)`, per-sample probabilities `(N, S)`) from the one scoring
    function, with the fold's seed and batch size, `CHUNK` patients' patches in memory at
    a time (the scores do not depend on the chunking)."""
    from mmfusion.train.dataset import SplitData
    from mmfusion.train.scoring import score_split

    tables = fold_tables(fold, frame)
    probability, per_sample = [], []
    for start in range(0, len(frame), CHUNK):
        rows = np.arange(start, min(len(frame), start + CHUNK))
        patches, present = _load_patches([folders[i] for i in rows])
        split = SplitData([str(frame["patient_id"].iloc[i]) for i in rows], patches, present,
                          {g: a[rows] for g, a in tables.items()},
                          np.zeros(len(rows), np.int64), np.arange(len(rows)))
        scores = score_split(model, split, fold.batch_size, device, fold.seed,
                             fold.precision(device))
        probability.append(scores.probability)
        per_sample.append(scores.sample_probability)
    if not probability:
        return np.zeros(0), np.zeros((0, 1))
    return np.concatenate(probability), np.concatenate(per_sample)


def score(bundle: Bundle, frame: pd.DataFrame, folders: Sequence[Path],
          device_name: str | None = None, graph_backend: str | None = None) -> Scores:
    """Score the patients of `frame` (one row each, cohort-table columns; `folders`: their
    prepared folders, same order) with every fold of `bundle` and combine them.
    `graph_backend` overrides the training run's `model.graph_backend`."""
    per_fold: list[np.ndarray] = []
    fold_p: list[np.ndarray] = []
    fold_raw: list[np.ndarray] = []
    deep = [f for f in bundle.folds if f.kind == "deep"]
    device = None
    if deep:
        from mmfusion.settings import section_defaults
        from mmfusion.train.device import describe_device, resolve_device

        device = resolve_device(device_name or section_defaults("train")["device"],
                                deep[0].graph_backend(graph_backend))
        log.info("scoring on %s", describe_device(device))
    for fold in bundle.folds:
        if fold.kind == "deep":
            model = build_model(fold, device, graph_backend)
            if model.graph_backend is not None:
                log.info("%s fold %d: graph backend %s (%s)", bundle.variant, fold.fold,
                         model.graph_backend, model.graph_backend_reason)
            raw, per_sample = _deep(fold, model, frame, folders, device)
        else:
            raw = _baseline(fold, frame)
            per_sample = raw[:, None]
        p, samples = recalibrate(fold, raw, per_sample)
        log.info("%s fold %d: mean probability %.3f (raw %.3f) over %d patient(s)",
                 bundle.variant, fold.fold, float(p.mean()) if p.size else float("nan"),
                 float(raw.mean()) if raw.size else float("nan"), len(raw))
        per_fold.append(samples)
        fold_p.append(p)
        fold_raw.append(raw)
    thresholds = [float(f.scoring["threshold"]) for f in bundle.folds]
    probability, uncertainty, decision, threshold = combine(per_fold, thresholds, fold_p)
    return Scores(patients=frame["patient_id"].astype(str).tolist(), per_fold=per_fold,
                  probability=probability, uncertainty=uncertainty, decision=decision,
                  threshold=threshold, fold_probability=fold_p, fold_probability_raw=fold_raw)
