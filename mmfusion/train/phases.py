"""The phases of one fold's training run after setup (`mmfusion.train.loop.fit_fold`).

Per epoch: `train_epoch` (one pass over the shuffled, augmented training split),
`validate_and_select` (score validation, keep the best checkpoint) and `record_epoch` (log
row, resumable `last.pt`); once at the end: `score_test` (threshold on validation, test
scored once, outputs written). The run's state travels between them in a `RunState`.

Mixed precision (`train.amp`, `mmfusion.train.device.Precision`) autocasts the backbones
of every forward pass, in training and evaluation; with fp16 the optimiser step goes
through a `GradScaler`. In the joint phase the diffusion loss (eq. 6) is conditioned as
`model.diffusion_conditioning` says (`_diffusion_condition`; gradients per setting in
`mmfusion.model.mmfusion`): `train` on the training pass's own features, `card` on a
second, eval-mode and gradient-free pass of the guide (the backbones under the same
autocast); the modules are back in training mode after it. The per-step loss sums are
read back from the device once per epoch (not after every step), so on a GPU the next
batch is read while the step runs.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.io import atomic_path, write_text_atomic
from mmfusion.model.mmfusion import DiffusionCondition, MMFusionModel, ModelConfig, ModelOutput
from mmfusion.train.augment import augment
from mmfusion.train.averaging import WeightAverage
from mmfusion.train.config import TrainConfig
from mmfusion.train.dataset import PATCH_KINDS, SplitData
from mmfusion.train.device import Precision, graph_placement
from mmfusion.train.metrics import binary_metrics, json_safe, safe_auc, youden_threshold
from mmfusion.train.recalibration import Recalibrator, fit_recalibrator
from mmfusion.train.scoring import (
    SplitScores,
    monte_carlo_sd,
    monte_carlo_summary,
    score_split,
)

CHECKPOINT_VERSION = 1


@dataclass
class RunState:
    """What one fold's run carries from epoch to epoch (and saves in `last.pt`)."""

    model_cfg: ModelConfig
    cfg: TrainConfig
    out: Path
    fold: int
    device: torch.device
    settings: dict[str, Any]  # recorded in checkpoints; a resume needs the same
    model: MMFusionModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    diff_opt: torch.optim.Optimizer | None  # extra noise-network updates, or None
    gen: torch.Generator  # shuffling and augmentation
    ema: WeightAverage | None
    precision: Precision = field(default_factory=Precision)  # train.amp in effect
    scaler: torch.cuda.amp.GradScaler | None = None  # fp16 only
    start_epoch: int = 0
    best: tuple[float, float] | None = None  # (validation AUC, Brier) of the chosen epoch
    best_epoch: int = -1
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def uses_diffusion(self) -> bool:
        return self.model_cfg.switches[2]

    @property
    def scored(self) -> MMFusionModel:
        """The weights validated and saved: the averaged ones when averaging is on."""
        return self.ema.model if self.ema is not None else self.model

    def phase(self, epoch: int) -> str:
        """`warmup` (guide only) for the diffusion variant's first epochs, else `joint`."""
        return "warmup" if self.uses_diffusion and epoch < self.cfg.warmup_epochs else "joint"


@dataclass
class EpochStats:
    """One training epoch's batch-size-weighted loss sums, guide hits and timings."""

    phase: str
    sums: dict[str, float] = field(default_factory=dict)
    n_seen: int = 0
    correct: int = 0
    t_data: float = 0.0
    t_step: float = 0.0  # includes the augmentation
    t_aug: float = 0.0  # CPU time of the augmentation (its random numbers are drawn there)


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def predict_split(model: MMFusionModel, split: SplitData, batch_size: int,
                  device: torch.device, seed: int, precision: Precision | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Probability and uncertainty `(N,)` for every patient of `split`: `score_split`'s
    (the one scoring function; its noise depends on `seed` and the patient only)."""
    scores = score_split(model, split, batch_size, device, seed, precision)
    return scores.probability, scores.uncertainty


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _is_better(score: tuple[float, float], best: tuple[float, float] | None) -> bool:
    if best is None:
        return True
    auc, brier = score
    best_auc, best_brier = best
    auc = -math.inf if math.isnan(auc) else auc
    best_auc = -math.inf if math.isnan(best_auc) else best_auc
    return auc > best_auc or (auc == best_auc and brier < best_brier)


def _diffusion_condition(run: RunState, batch: Mapping[str, torch.Tensor],
                         outputs: ModelOutput, phase: str) -> DiffusionCondition | None:
    """What conditions eq. 6 in this step; None when the step has no diffusion term.
    `train`: the training pass's features (with gradient) and detached ŷ; `card`: an
    eval-mode guide pass without gradient (`MMFusionModel.card_condition`), its backbones
    under the run's autocast like every forward pass."""
    if not run.uses_diffusion or phase != "joint":
        return None
    model = run.model
    if run.model_cfg.diffusion_conditioning == "card":
        with torch.no_grad(), model.guide_eval():
            return model.card_condition(run.precision.image_maps(model, batch))
    return model.train_condition(outputs)


def _extra_diffusion_updates(model: MMFusionModel, batch: Mapping[str, torch.Tensor],
                             condition: DiffusionCondition, optimizer: torch.optim.Optimizer,
                             n: int) -> None:
    """`n` noise-network steps of eq. 6 on this batch's detached conditioning."""
    y0 = torch.nn.functional.one_hot(batch["label"].long(), 2).float()
    features, y_hat = condition.features.detach(), condition.y_hat.detach()
    for _ in range(n):
        loss = model.cfd.loss(y0, features, y_hat)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _train_mode(model: MMFusionModel) -> None:
    """Training mode, except a frozen backbone (its BatchNorm statistics stay fixed)."""
    model.train()
    if model.cfg.freeze_backbone:
        model.backbones.eval()


def _optimiser_step(run: RunState, total: torch.Tensor) -> None:
    """Backward pass and step of the main optimiser (through the fp16 gradient scaler)."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        total.backward()
        run.optimizer.step()
        return
    run.scaler.scale(total).backward()
    run.scaler.step(run.optimizer)  # skipped when the scaled gradients overflowed
    run.scaler.update()


def _add_step_stats(stats: EpochStats,
                    steps: list[tuple[int, dict[str, torch.Tensor], torch.Tensor]]) -> None:
    """Fold the epoch's per-step (batch size, loss terms, guide hits) into `stats`, in
    step order (one read-back from the device per epoch)."""
    for b, terms, hits in steps:
        for key, value in terms.items():
            stats.sums[key] = stats.sums.get(key, 0.0) + float(value) * b
        stats.correct += int(hits)
        stats.n_seen += b


def train_epoch(run: RunState, train: SplitData, epoch: int) -> EpochStats:
    """One shuffled pass over `train`: augment, optimiser step (then the extra noise-network
    steps and the weight average), and the scheduler's step at the end of the epoch."""
    cfg, model = run.cfg, run.model
    stats = EpochStats(run.phase(epoch))
    steps: list[tuple[int, dict[str, torch.Tensor], torch.Tensor]] = []
    _train_mode(model)
    t0 = time.perf_counter()
    for batch in train.batches(cfg.batch_size, run.device, run.gen, drop_singleton=True):
        t1 = time.perf_counter()
        stats.t_data += t1 - t0
        for kind in PATCH_KINDS:
            if kind in batch:  # absent with cached feature maps (frozen backbone)
                batch[kind] = augment(batch[kind], cfg.augment, run.gen)
        stats.t_aug += time.perf_counter() - t1
        outputs = model(run.precision.image_maps(model, batch))
        condition = _diffusion_condition(run, batch, outputs, stats.phase)
        terms = model.loss(batch, outputs, stats.phase, condition)
        _optimiser_step(run, terms["total"])
        if run.diff_opt is not None and condition is not None:
            _extra_diffusion_updates(model, batch, condition, run.diff_opt,
                                     cfg.diffusion_updates)
        if run.ema is not None:
            run.ema.update(model)
        steps.append((int(batch["label"].shape[0]),
                      {key: value.detach() for key, value in terms.items()},
                      ((outputs.logit.detach() > 0).float() == batch["label"]).sum()))
        t0 = time.perf_counter()
        stats.t_step += t0 - t1
    run.scheduler.step()
    _add_step_stats(stats, steps)
    return stats


def validate_and_select(run: RunState, val: SplitData, epoch: int,
                        phase: str) -> tuple[float, float]:
    """Score `val` with the scored weights; when this epoch is eligible and beats the best
    (AUC, ties: lower Brier), save it as `model.pt`. Returns (AUC, Brier)."""
    cfg = run.cfg
    val_p, _ = predict_split(run.scored, val, cfg.batch_size, run.device, cfg.seed,
                             run.precision)
    val_auc = safe_auc(val.labels, val_p)
    val_brier = float(np.mean((val_p - val.labels) ** 2)) if len(val) else math.nan
    # the diffusion head is untrained during warm-up
    eligible = phase == "joint" and epoch >= min(cfg.select_from, cfg.epochs - 1)
    if eligible and _is_better((val_auc, val_brier), run.best):
        run.best, run.best_epoch = (val_auc, val_brier), epoch
        _save({"version": CHECKPOINT_VERSION, "epoch": epoch, "settings": run.settings,
               "model": run.scored.state_dict()}, run.out / "model.pt")
    return val_auc, val_brier


def record_epoch(run: RunState, epoch: int, stats: EpochStats, val_auc: float,
                 val_brier: float) -> dict[str, Any]:
    """Append the epoch's log row, write the resumable `last.pt` (weights, optimisers, RNG
    states, selection so far) and `train_log.csv`. Returns the row."""
    n_seen = max(stats.n_seen, 1)
    row = {"epoch": epoch, "phase": stats.phase, "lr": run.optimizer.param_groups[0]["lr"],
           **{f"train_{k}": v / n_seen for k, v in stats.sums.items() if k != "total"},
           "train_loss": stats.sums.get("total", 0.0) / n_seen,
           "train_guide_accuracy": stats.correct / n_seen,
           "val_auc": val_auc, "val_brier": val_brier,
           "epoch_seconds": stats.t_data + stats.t_step,
           "data_wait_share": stats.t_data / max(stats.t_data + stats.t_step, 1e-9)}
    row.setdefault("train_diffusion", math.nan)
    run.log.append(row)
    device, diff_opt, ema = run.device, run.diff_opt, run.ema
    _save({"version": CHECKPOINT_VERSION, "epoch": epoch, "settings": run.settings,
           "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
           "scheduler": run.scheduler.state_dict(), "generator": run.gen.get_state(),
           "diffusion_optimizer": diff_opt.state_dict() if diff_opt is not None else None,
           "ema": ema.model.state_dict() if ema is not None else None,
           "scaler": run.scaler.state_dict() if run.scaler is not None else None,
           "torch_rng": torch.get_rng_state(),
           "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
           "best": run.best, "best_epoch": run.best_epoch, "log": run.log},
          run.out / "last.pt")
    _write_log(run.out / "train_log.csv", run.log)
    return row


def monte_carlo_error(run: RunState, scores: Mapping[str, SplitScores],
                      recal: Recalibrator) -> dict[str, Any]:
    """The Monte Carlo error of the fold's diffusion scores: per split, the spread of each
    patient's recalibrated (and raw) probability over the scored noise draw and
    `train.mc_replicates` independent ones (`mmfusion.train.scoring`), summarised over
    patients."""
    out: dict[str, Any] = {"n_samples": run.model_cfg.n_samples,
                           "replicates": run.cfg.mc_replicates,
                           "what": "sd of a patient's probability over independent noise "
                                   "draws (the scored one + replicates)"}
    for name, s in scores.items():
        assert s.replicates is not None
        out[name] = monte_carlo_summary(monte_carlo_sd(s.probability, s.replicates,
                                                       recal.apply))
        out[f"{name}_raw"] = monte_carlo_summary(monte_carlo_sd(s.probability,
                                                                s.replicates))
    return out


def score_test(run: RunState, splits: Mapping[str, SplitData]) -> dict[str, Any]:
    """Load the chosen checkpoint (fit the temperature on validation for the `difference`
    probability), fit the recalibration (`train.recalibration`) and pick the threshold on
    validation, score test once; write the predictions (recalibrated and raw) and
    `metrics.json`. Returns the metrics."""
    from mmfusion.train.fold import write_predictions, write_scoring

    cfg, model, out, device = run.cfg, run.model, run.out, run.device
    variant, val, test = run.model_cfg.variant, splits["val"], splits["test"]
    chosen = torch.load(out / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(chosen["model"])
    temperature = None
    if run.uses_diffusion and run.model_cfg.probability == "difference" and len(val):
        samples = score_split(model, val, cfg.batch_size, device, cfg.seed,
                              run.precision).samples
        assert samples is not None
        temperature = model.cfd.fit_temperature(torch.from_numpy(samples),
                                                torch.from_numpy(val.labels))
        chosen["model"] = model.state_dict()
        _save(chosen, out / "model.pt")
    replicates = cfg.mc_replicates if run.uses_diffusion else 0
    val_scores = score_split(model, val, cfg.batch_size, device, cfg.seed, run.precision,
                             replicates=replicates)
    val_raw, val_u = val_scores.probability, val_scores.uncertainty
    recal = fit_recalibrator(val_raw, val.labels, cfg.recalibration)  # validation only
    val_p = recal.apply(val_raw)
    threshold = youden_threshold(val.labels, val_p)
    write_predictions(out / "val_predictions.csv", val.patient_ids, val.labels, run.fold,
                      variant, val_p, val_u, val_raw)
    test_scores = score_split(model, test, cfg.batch_size, device, cfg.seed, run.precision,
                              replicates=replicates)
    test_raw, test_u = test_scores.probability, test_scores.uncertainty
    test_p = recal.apply(test_raw)
    write_predictions(out / "predictions.csv", test.patient_ids, test.labels, run.fold,
                      variant, test_p, test_u, test_raw)
    monte_carlo = (monte_carlo_error(run, {"val": val_scores, "test": test_scores}, recal)
                   if replicates else None)
    metrics = {
        "variant": variant, "fold": run.fold, "best_epoch": run.best_epoch,
        "threshold": threshold, "temperature": temperature,
        "recalibration": recal.to_dict(),
        "monte_carlo": monte_carlo,
        "test": binary_metrics(test.labels, test_p, threshold),
        "val": binary_metrics(val.labels, val_p, threshold),
        "test_brier_raw": (float(np.mean((test_raw - test.labels) ** 2)) if len(test)
                           else math.nan),
        "n_train": len(splits["train"]), "device": str(device),
        # the graph layer runs where the model runs, but DGL only where it can: a DGL
        # without CUDA keeps it on the CPU next to a GPU model (hybrid, graph_device_for)
        "graph_backend": model.graph_backend, "graph_backend_reason": model.graph_backend_reason,
        **graph_placement(model, device),
        "mean_epoch_seconds": float(np.mean([r["epoch_seconds"] for r in run.log])),
        "mean_data_wait_share": float(np.mean([r["data_wait_share"] for r in run.log])),
        "settings": run.settings,
    }
    write_text_atomic(out / "metrics.json",
                      json.dumps(json_safe(metrics), indent=1, allow_nan=False) + "\n")
    write_scoring(out, {"variant": variant, "fold": run.fold, "kind": "deep",
                        "threshold": threshold, "temperature": temperature,
                        "recalibration": recal.to_dict(),
                        "best_epoch": run.best_epoch, "weights": "model.pt",
                        "seed": cfg.seed, "batch_size": cfg.batch_size,
                        # the precision its threshold and calibration were fitted at
                        "amp": run.precision.mode,
                        "model": run.settings["model"],
                        "tabular_widths": run.settings["tabular_widths"]})
    return metrics
