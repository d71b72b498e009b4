"""Fold-honest training of one variant on one fold (DESIGN §5–6, supplement Table 2).

Adam (lr 1e-4, weight decay 5e-4), cosine annealing with warm restart (T_0 = restart
epoch 80, min lr 1e-5), batch 12; for `mmfusion` the first `warmup_epochs` train the guide
(BCE + MMRL alignment) and then the diffusion joins (loss eq. 7). After every epoch the
validation split is scored and a resumable checkpoint (named keys, version) is written.
The checkpoint with the best validation AUC (ties: lower Brier) and a threshold (Youden's
J on validation) are chosen on validation only; the test split is scored once, at the end,
with that checkpoint. Test labels are used for nothing but the final metrics.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmfusion.errors import ConfigError
from mmfusion.io import atomic_path, write_text_atomic
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.settings import checked_section
from mmfusion.train.augment import AugmentSettings, augment
from mmfusion.train.dataset import PATCH_KINDS, SplitData
from mmfusion.train.features import check_feature_cache, load_frozen_backbone, warn_random_backbone
from mmfusion.train.metrics import binary_metrics, json_safe, safe_auc, youden_threshold

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (config section `train`); defaults from supplement Table 2."""

    epochs: int = 100
    batch_size: int = 12
    lr: float = 1e-4
    weight_decay: float = 5e-4
    min_lr: float = 1e-5
    restart_epoch: int = 80
    warmup_epochs: int = 50
    # Extra noise-network updates per batch in the joint phase, on the batch's detached HGA
    # features and guide prediction (Adam at `diffusion_lr`, 0 = `lr`). CARD trains its
    # noise network for thousands of steps; a small cohort gives a few per epoch.
    diffusion_updates: int = 0
    # Checkpoints are chosen (on validation) among epochs >= select_from only (and, for the
    # diffusion variant, after the warm-up): the first joint epochs' diffusion head is still
    # untrained noise, and a small validation split can rank noise highly by luck.
    select_from: int = 0
    diffusion_lr: float = 0.0
    # Exponential moving average of the weights (Polyak averaging, as DDPM/CARD train their
    # networks): validation, checkpoints and the test score use the averaged weights, which
    # vary far less from epoch to epoch than the raw ones on a small cohort. 0 = off.
    ema_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    progress: bool = True

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> TrainConfig:
        """Build from a config section, failing on unknown keys."""
        section = checked_section(cls, section, "train")
        if "augment" in section:
            section["augment"] = AugmentSettings(
                **checked_section(AugmentSettings, section["augment"], "train.augment"))
        return cls(**section)


class WeightAverage:
    """Exponential moving average of a model's weights and float buffers (Polyak).

    `update()` after every optimiser step: `avg <- decay * avg + (1 - decay) * weights`;
    integer buffers (BatchNorm's batch counter) are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in (0, 1) or 0 (off), not {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        averaged = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                averaged[name].lerp_(value, 1.0 - self.decay)
            else:
                averaged[name].copy_(value)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available",
                          fix="set train.device: auto")
    return torch.device(name)


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@torch.no_grad()
def predict_split(model: MMFusionModel, split: SplitData, batch_size: int,
                  device: torch.device, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probability and uncertainty `(N,)` for every patient of `split` (eval mode)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)  # same diffusion noise every evaluation
    probs, uncs = [], []
    for batch in split.batches(batch_size, device):
        p, u = model.predict(batch, generator=gen)
        probs.append(p.float().cpu().numpy())
        uncs.append(u.float().cpu().numpy())
    if not probs:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(probs), np.concatenate(uncs)


def _write_predictions(path: Path, split: SplitData, probs: np.ndarray, uncs: np.ndarray,
                       fold: int, variant: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "fold", "variant", "probability", "uncertainty",
                         "label"])
        for pid, p, u, y in zip(split.patient_ids, probs, uncs, split.labels, strict=True):
            writer.writerow([pid, fold, variant, f"{p:.6f}", f"{u:.6f}", int(y)])


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


def _extra_diffusion_updates(model: MMFusionModel, batch: Mapping[str, torch.Tensor],
                             outputs: Any, optimizer: torch.optim.Optimizer, n: int) -> None:
    """`n` noise-network steps of eq. 6 on this batch's detached features and ŷ."""
    y0 = torch.nn.functional.one_hot(batch["label"].long(), 2).float()
    features = outputs.features.detach()
    y_hat = model.guide_probabilities(outputs.logit.detach())
    for _ in range(n):
        loss = model.cfd.loss(y0, features, y_hat)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _freeze_backbone(model: MMFusionModel, cfg: TrainConfig, splits: Mapping[str, SplitData],
                     features: str | Path | None, device: torch.device) -> dict[str, Any] | None:
    """Frozen-backbone mode (`model.freeze_backbone`): check the feature cache, give the
    model its backbone weights, frozen (no gradients, eval mode). Returns what the
    checkpoints record about the cache, or None when the backbone trains."""
    if not model.cfg.freeze_backbone and features is None:
        return None
    stored = check_feature_cache(features, model.cfg, cfg.seed)
    assert features is not None  # check_feature_cache refuses None
    if not all("tumour_fmap" in s.patches for s in splits.values()):
        raise ConfigError("frozen-backbone training reads cached feature maps, but the "
                          "splits serve image patches",
                          fix="load the splits with load_fold(..., features=FOLDER)")
    warn_random_backbone(model.cfg)
    load_frozen_backbone(model, features, device)
    return {"path": str(Path(features).resolve()),
            "model": stored["model"], "patch_cache": stored["patch_cache"]}


def _train_mode(model: MMFusionModel) -> None:
    """Training mode, except a frozen backbone (its BatchNorm statistics stay fixed)."""
    model.train()
    if model.cfg.freeze_backbone:
        model.backbones.eval()


def fit_fold(model_cfg: ModelConfig, cfg: TrainConfig, splits: Mapping[str, SplitData],
             out_dir: str | Path, fold: int = 0, resume: bool = True,
             features: str | Path | None = None) -> dict[str, Any]:
    """Train `model_cfg.variant` on `splits['train']`, select on `val`, score `test` once.

    With `model_cfg.freeze_backbone`, `features` is the feature cache
    (`mmfusion.train.features`) the splits were loaded from: the backbone takes its weights
    and is not trained, and images are not augmented (the maps are of the raw patches).
    Writes to `out_dir`: `last.pt` (resumable state), `model.pt` (chosen checkpoint, the
    whole model, backbone included), `train_log.csv`, `val_predictions.csv`,
    `predictions.csv`, `metrics.json`. Returns the metrics dictionary.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variant = model_cfg.variant
    uses_diffusion = model_cfg.switches[2]
    if uses_diffusion and cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(f"train.warmup_epochs ({cfg.warmup_epochs}) leaves no joint "
                          f"epoch of {cfg.epochs}", fix="lower train.warmup_epochs")
    device = resolve_device(cfg.device)
    train, val = splits["train"], splits["val"]
    widths = {g: int(a.shape[1]) for g, a in train.tables.items()}

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = MMFusionModel(model_cfg, widths).to(device)
    frozen = _freeze_backbone(model, cfg, splits, features, device)
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
    scored = ema.model if ema is not None else model  # the weights validated and saved
    settings = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg),
                "tabular_widths": widths, "fold": fold}
    if frozen is not None:
        settings["features"] = frozen
    start_epoch, best, best_epoch, log = 0, None, -1, []

    last = out / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location=device, weights_only=True)
        if state.get("version") == CHECKPOINT_VERSION and state["settings"] == settings:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if diff_opt is not None:
                diff_opt.load_state_dict(state["diffusion_optimizer"])
            if ema is not None:
                ema.model.load_state_dict(state["ema"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start_epoch, best, best_epoch, log = (state["epoch"] + 1, state["best"],
                                                  state["best_epoch"], state["log"])

    bar = tqdm(range(start_epoch, cfg.epochs), desc=f"{variant} fold{fold}",
               initial=start_epoch, total=cfg.epochs, disable=not cfg.progress, leave=False)
    for epoch in bar:
        phase = "warmup" if uses_diffusion and epoch < cfg.warmup_epochs else "joint"
        _train_mode(model)
        sums: dict[str, float] = {}
        n_seen = correct = 0
        t_data = t_step = 0.0
        t0 = time.perf_counter()
        for batch in train.batches(cfg.batch_size, device, gen, drop_singleton=True):
            t1 = time.perf_counter()
            t_data += t1 - t0
            for kind in PATCH_KINDS:
                if kind in batch:  # absent with cached feature maps (frozen backbone)
                    batch[kind] = augment(batch[kind], cfg.augment, gen)
            outputs = model(batch)
            terms = model.loss(batch, outputs, phase)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            if diff_opt is not None and phase == "joint":
                _extra_diffusion_updates(model, batch, outputs, diff_opt, cfg.diffusion_updates)
            if ema is not None:
                ema.update(model)
            b = int(batch["label"].shape[0])
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * b
            correct += int(((outputs.logit.detach() > 0).float() == batch["label"]).sum())
            n_seen += b
            t0 = time.perf_counter()
            t_step += t0 - t1
        scheduler.step()

        val_p, _ = predict_split(scored, val, cfg.batch_size, device, cfg.seed)
        val_auc = safe_auc(val.labels, val_p)
        val_brier = float(np.mean((val_p - val.labels) ** 2)) if len(val) else math.nan
        # the diffusion head is untrained during warm-up
        eligible = phase == "joint" and epoch >= min(cfg.select_from, cfg.epochs - 1)
        if eligible and _is_better((val_auc, val_brier), best):
            best, best_epoch = (val_auc, val_brier), epoch
            _save({"version": CHECKPOINT_VERSION, "epoch": epoch, "settings": settings,
                   "model": scored.state_dict()}, out / "model.pt")
        row = {"epoch": epoch, "phase": phase, "lr": optimizer.param_groups[0]["lr"],
               **{f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()
                  if k != "total"},
               "train_loss": sums.get("total", 0.0) / max(n_seen, 1),
               "train_guide_accuracy": correct / max(n_seen, 1),
               "val_auc": val_auc, "val_brier": val_brier,
               "epoch_seconds": t_data + t_step,
               "data_wait_share": t_data / max(t_data + t_step, 1e-9)}
        row.setdefault("train_diffusion", math.nan)
        log.append(row)
        _save({"version": CHECKPOINT_VERSION, "epoch": epoch, "settings": settings,
               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "generator": gen.get_state(),
               "diffusion_optimizer": diff_opt.state_dict() if diff_opt is not None else None,
               "ema": ema.model.state_dict() if ema is not None else None,
               "torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
               "best": best, "best_epoch": best_epoch, "log": log}, last)
        _write_log(out / "train_log.csv", log)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{val_auc:.3f}")

    # ---- the chosen checkpoint: threshold on validation, test scored once ------------
    chosen = torch.load(out / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(chosen["model"])
    temperature = None
    if uses_diffusion and model_cfg.probability == "difference" and len(val):
        model.eval()
        gen_t = torch.Generator().manual_seed(cfg.seed)
        samples = torch.cat([model.diffusion_samples(b, generator=gen_t)
                             for b in val.batches(cfg.batch_size, device)])
        temperature = model.cfd.fit_temperature(samples, torch.from_numpy(val.labels))
        chosen["model"] = model.state_dict()
        _save(chosen, out / "model.pt")
    val_p, val_u = predict_split(model, val, cfg.batch_size, device, cfg.seed)
    threshold = youden_threshold(val.labels, val_p)
    _write_predictions(out / "val_predictions.csv", val, val_p, val_u, fold, variant)
    test = splits["test"]
    test_p, test_u = predict_split(model, test, cfg.batch_size, device, cfg.seed)
    _write_predictions(out / "predictions.csv", test, test_p, test_u, fold, variant)
    metrics = {
        "variant": variant, "fold": fold, "best_epoch": best_epoch, "threshold": threshold,
        "temperature": temperature,
        "test": binary_metrics(test.labels, test_p, threshold),
        "val": binary_metrics(val.labels, val_p, threshold),
        "n_train": len(train), "device": str(device),
        "mean_epoch_seconds": float(np.mean([r["epoch_seconds"] for r in log])),
        "mean_data_wait_share": float(np.mean([r["data_wait_share"] for r in log])),
        "settings": settings,
    }
    write_text_atomic(out / "metrics.json",
                      json.dumps(json_safe(metrics), indent=1, allow_nan=False) + "\n")
    return metrics
