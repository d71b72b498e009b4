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
with `torch.load(weights_only=True)`; `model.pretrained` is not read again (the weights
hold the backbone). Diffusion sampling restarts from the training seed for every batch,
so a patient's score never depends on the other patients scored with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmfusion.cohort.preprocess import FoldPreprocessor
from mmfusion.errors import ConfigError
from mmfusion.predict.bundle import Bundle, FoldModel
from mmfusion.train.recalibration import Recalibrator

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


def recalibrate(fold: FoldModel, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fold's raw `(N, S)` probabilities -> (its probability `(N,)` = the map of the
    mean over samples, as the fold's own test predictions; every sample mapped `(N, S)`)."""
    recal = Recalibrator.from_dict(fold.scoring.get("recalibration"))
    raw = np.asarray(raw, dtype=np.float64)
    return recal.apply(raw.mean(axis=1)), recal.apply(raw)


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


def _tables(fold: FoldModel, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    pre = FoldPreprocessor.from_dict(fold.preprocessor)
    arrays = pre.transform(frame)
    widths = fold.scoring.get("tabular_widths")
    if widths is not None:
        got = {g: int(a.shape[1]) for g, a in arrays.items()}
        if {g: int(w) for g, w in widths.items()} != got:
            raise ConfigError(f"fold {fold.fold}: preprocessed widths {got} differ from the "
                              f"model's {widths}", path=str(fold.folder))
    return arrays


def _baseline(fold: FoldModel, frame: pd.DataFrame) -> np.ndarray:
    from mmfusion.model.baselines import probabilities_from_parameters

    with np.load(fold.folder / fold.scoring["parameters"], allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files}
    return probabilities_from_parameters(params, _tables(fold, frame))[:, None]


def _deep_model(fold: FoldModel, device):  # -> MMFusionModel
    import torch

    from mmfusion.model.mmfusion import MMFusionModel, ModelConfig

    settings = {**fold.scoring["model"], "pretrained": "", "freeze_backbone": False}
    model = MMFusionModel(ModelConfig(**settings), fold.scoring["tabular_widths"])
    state = torch.load(fold.folder / fold.scoring["weights"], map_location=device,
                       weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _load_patches(folders: Sequence[Path]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from mmfusion.features.patches import load_patches

    loaded = [load_patches(f / "patches.npz") for f in folders]
    patches = {"tumour": np.stack([p.tumour for p in loaded])}
    for i in range(3):
        patches[f"node{i + 1}"] = np.stack([p.nodes[i] for p in loaded])
    return patches, np.stack([p.node_present for p in loaded]).astype(np.uint8)


def _deep(fold: FoldModel, model, frame: pd.DataFrame, folders: Sequence[Path],
          device) -> np.ndarray:
    import torch

    from mmfusion.train.dataset import SplitData

    tables = _tables(fold, frame)
    batch_size, seed = int(fold.scoring["batch_size"]), int(fold.scoring["seed"])
    out = []
    for start in range(0, len(frame), CHUNK):
        rows = np.arange(start, min(len(frame), start + CHUNK))
        patches, present = _load_patches([folders[i] for i in rows])
        split = SplitData([str(frame["patient_id"].iloc[i]) for i in rows], patches, present,
                          {g: a[rows] for g, a in tables.items()},
                          np.zeros(len(rows), np.int64), np.arange(len(rows)))
        for b0 in range(0, len(rows), batch_size):
            batch = split.batch(np.arange(b0, min(len(rows), b0 + batch_size)), device)
            gen = torch.Generator().manual_seed(seed)  # same noise for every batch
            with torch.no_grad():
                if model.use_cfd:
                    samples = model.diffusion_samples(batch, generator=gen)
                    probs = model.cfd.sample_probabilities(samples)
                else:
                    probs = model.predict(batch)[0][:, None]
            out.append(probs.float().cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, 1))


def score(bundle: Bundle, frame: pd.DataFrame, folders: Sequence[Path],
          device_name: str | None = None) -> Scores:
    """Score the patients of `frame` (one row each, cohort-table columns; `folders`: their
    prepared folders, same order) with every fold of `bundle` and combine them."""
    per_fold: list[np.ndarray] = []
    fold_p: list[np.ndarray] = []
    fold_raw: list[np.ndarray] = []
    deep = any(f.kind == "deep" for f in bundle.folds)
    device = None
    if deep:
        from mmfusion.settings import section_defaults
        from mmfusion.train.device import describe_device, resolve_device

        device = resolve_device(device_name or section_defaults("train")["device"])
        log.info("scoring on %s", describe_device(device))
    for fold in bundle.folds:
        if fold.kind == "deep":
            probs = _deep(fold, _deep_model(fold, device), frame, folders, device)
        else:
            probs = _baseline(fold, frame)
        p, samples = recalibrate(fold, probs)
        log.info("%s fold %d: mean probability %.3f (raw %.3f) over %d patient(s)",
                 bundle.variant, fold.fold, float(p.mean()) if p.size else float("nan"),
                 float(probs.mean()) if probs.size else float("nan"), len(probs))
        per_fold.append(samples)
        fold_p.append(p)
        fold_raw.append(probs.mean(axis=1))
    thresholds = [float(f.scoring["threshold"]) for f in bundle.folds]
    probability, uncertainty, decision, threshold = combine(per_fold, thresholds, fold_p)
    return Scores(patients=frame["patient_id"].astype(str).tolist(), per_fold=per_fold,
                  probability=probability, uncertainty=uncertainty, decision=decision,
                  threshold=threshold, fold_probability=fold_p, fold_probability_raw=fold_raw)
