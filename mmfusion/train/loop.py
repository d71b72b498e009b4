"""Fold-honest training of one variant on one fold (DESIGN §5–6, supplement Table 2).

Adam (lr 1e-4, weight decay 5e-4), cosine annealing with warm restart (T_0 = restart
epoch 80, min lr 1e-5), batch 12; for `mmfusion` the first `warmup_epochs` train the guide
(BCE + MMRL alignment) and then the diffusion joins (loss eq. 7). One Adam steps every
trainable parameter on eq. 7 (the noise network included); a second one (`diff_opt`,
when `train.diffusion_updates` > 0) steps the noise network alone on eq. 6 with detached
conditioning. Whether eq. 6 also trains the feature extractor, and on which features, is
`model.diffusion_conditioning` (`mmfusion.model.mmfusion`). After every epoch the
validation split is scored and a resumable checkpoint (named keys, version) is written.
The checkpoint with the best validation AUC (ties: lower Brier) and a threshold (Youden's
J on validation) are chosen on validation only; the test split is scored once, at the end,
with that checkpoint. Test labels are used for nothing but the final metrics.

`fit_fold` runs the phases in order: `_setup_run` here, then per epoch `train_epoch`,
`validate_and_select` and `record_epoch`, and at the end `score_test` (`mmfusion.train.phases`).
The device (`train.device`; on CUDA one free GPU per process) and the mixed precision
(`train.amp`) come from `mmfusion.train.device`; the log starts with a line describing them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmfusion.errors import ConfigError
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.train.averaging import WeightAverage
from mmfusion.train.config import TrainConfig
from mmfusion.train.dataset import SplitData
from mmfusion.train.determinism import apply_determinism
from mmfusion.train.device import describe_device, precision_for, resolve_device, select_device
from mmfusion.train.features import check_feature_cache, load_frozen_backbone, warn_random_backbone
from mmfusion.train.phases import (
    CHECKPOINT_VERSION,
    RunState,
    predict_split,
    record_epoch,
    score_test,
    train_epoch,
    validate_and_select,
)

__all__ = ["CHECKPOINT_VERSION", "TrainConfig", "WeightAverage", "fit_fold", "predict_split",
           "resolve_device"]

log = logging.getLogger(__name__)


def _freeze_backbone(model: MMFusionModel, cfg: TrainConfig, splits: Mapping[str, SplitData],
                     features: str | Path | None, device: torch.device,
                     feature_seed: int | None = None) -> dict[str, Any] | None:
    """Frozen-backbone mode (`model.freeze_backbone`): check the feature cache (built with
    `feature_seed`, default `cfg.seed`), give the model its backbone weights, frozen (no
    gradients, eval mode). Returns what the checkpoints record about the cache, or None
    when the backbone trains."""
    if not model.cfg.freeze_backbone and features is None:
        return None
    stored = check_feature_cache(features, model.cfg,
                                 cfg.seed if feature_seed is None else feature_seed)
    assert features is not None  # check_feature_cache refuses None
    if not all("tumour_fmap" in s.patches for s in splits.values()):
        raise ConfigError("frozen-backbone training reads cached feature maps, but the "
                          "splits serve image patches",
                          fix="load the splits with load_fold(..., features=FOLDER)")
    warn_random_backbone(model.cfg)
    load_frozen_backbone(model, features, device)
    return {"path": str(Path(features).resolve()),
            "model": stored["model"], "patch_cache": stored["patch_cache"]}


def _setup_run(model_cfg: ModelConfig, cfg: TrainConfig, splits: Mapping[str, SplitData],
               out: Path, fold: int, features: str | Path | None,
               device: torch.device | None = None, feature_seed: int | None = None
               ) -> RunState:
    """Seed, build the model (frozen backbone loaded), its optimiser(s), scheduler, shuffling
    generator and weight average. The construction order is the order of the random draws,
    so a seeded run repeats exactly. `device` (tools only) skips `train.device`'s
    resolution and GPU lock."""
    uses_diffusion = model_cfg.switches[2]
    if uses_diffusion and cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(f"train.warmup_epochs ({cfg.warmup_epochs}) leaves no joint "
                          f"epoch of {cfg.epochs}", fix="lower train.warmup_epochs")
    determinism = apply_determinism(cfg.deterministic)  # before CUDA starts, if it has not
    device = device or select_device(cfg.device, model_cfg.graph_backend)
    precision = precision_for(cfg.amp, device)
    log.info("%s; amp %s", describe_device(device), precision.mode)
    widths = {g: int(a.shape[1]) for g, a in splits["train"].tables.items()}

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = MMFusionModel(model_cfg, widths, device=device).to(device)
    if model.graph_backend is not None:
        log.info("graph backend %s (%s)", model.graph_backend, model.graph_backend_reason)
    frozen = _freeze_backbone(model, cfg, splits, features, device, feature_seed)
    # foreach: one multi-tensor update instead of a Python loop over parameters (CPU too)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.restart_epoch, eta_min=cfg.min_lr)
    diff_opt = (torch.optim.Adam(model.cfd.noise_net.parameters(),
                                 lr=cfg.diffusion_lr or cfg.lr, weight_decay=cfg.weight_decay,
                                 foreach=True)
                if uses_diffusion and cfg.diffusion_updates > 0 else None)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    settings = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg),
                "tabular_widths": widths, "fold": fold}
    if frozen is not None:
        settings["features"] = frozen
    if cfg.deterministic:  # what was in force (metrics.json settings.determinism)
        settings["determinism"] = determinism
    return RunState(model_cfg=model_cfg, cfg=cfg, out=out, fold=fold, device=device,
                    settings=settings, model=model, optimizer=optimizer, scheduler=scheduler,
                    diff_opt=diff_opt, gen=gen, ema=ema, precision=precision,
                    scaler=precision.scaler())


def _resume(run: RunState, last: Path) -> None:
    """Continue from `last.pt` when it holds a run of the same settings: weights,
    optimisers, scheduler, RNG states and the selection so far, from its next epoch on."""
    if not last.is_file():
        return
    state = torch.load(last, map_location=run.device, weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION or state["settings"] != run.settings:
        return
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.diff_opt is not None:
        run.diff_opt.load_state_dict(state["diffusion_optimizer"])
    if run.ema is not None:
        run.ema.model.load_state_dict(state["ema"])
    if run.scaler is not None and state.get("scaler") is not None:
        run.scaler.load_state_dict(state["scaler"])
    run.gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if run.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    run.start_epoch, run.best, run.best_epoch, run.log = (
        state["epoch"] + 1, state["best"], state["best_epoch"], state["log"])


def fit_fold(model_cfg: ModelConfig, cfg: TrainConfig, splits: Mapping[str, SplitData],
             out_dir: str | Path, fold: int = 0, resume: bool = True,
             features: str | Path | None = None, feature_seed: int | None = None
             ) -> dict[str, Any]:
    """Train `model_cfg.variant` on `splits['train']`, select on `val`, score `test` once.

    With `model_cfg.freeze_backbone`, `features` is the feature cache
    (`mmfusion.train.features`, built with `feature_seed`, default `cfg.seed`: another
    training seed of the fold shares it) the splits were loaded from: the backbone takes its weights
    and is not trained, and images are not augmented (the maps are of the raw patches).
    Writes to `out_dir`: `last.pt` (resumable state), `model.pt` (chosen checkpoint, the
    whole model, backbone included), `train_log.csv`, `val_predictions.csv`,
    `predictions.csv`, `metrics.json`; for `mmfusion predict` also `scoring.json`
    (threshold, temperature, settings) and, when `splits` carry their fitted preprocessor
    (`load_fold` gives a `FoldSplits`), `preprocessor.json`. Returns the metrics dictionary.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _setup_run(model_cfg, cfg, splits, out, fold, features,
                     feature_seed=feature_seed)
    if resume:
        _resume(run, out / "last.pt")

    bar = tqdm(range(run.start_epoch, cfg.epochs), desc=f"{model_cfg.variant} fold{fold}",
               initial=run.start_epoch, total=cfg.epochs, disable=not cfg.progress,
               leave=False)
    for epoch in bar:
        stats = train_epoch(run, splits["train"], epoch)
        val_auc, val_brier = validate_and_select(run, splits["val"], epoch, stats.phase)
        row = record_epoch(run, epoch, stats, val_auc, val_brier)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{val_auc:.3f}")

    # the chosen checkpoint: threshold on validation, test scored once
    metrics = score_test(run, splits)
    # what scoring a new patient needs beside model.pt and scoring.json (mmfusion predict)
    pre = getattr(splits, "preprocessor", None)
    if pre is not None:
        from mmfusion.train.fold import write_preprocessor

        write_preprocessor(pre, out)
    return metrics
