"""Settings of the training stage (config section `train`), defaults from the schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmfusion.settings import checked_section, schema_defaults
from mmfusion.train.augment import AugmentSettings


@dataclass(frozen=True)
@schema_defaults("train", unread=("gpus_per_job", "seeds"))
class TrainConfig:
    """Optimisation settings (config section `train`); defaults come from the config
    schema and follow supplement Table 2 (Adam lr 1e-4, weight decay 5e-4, 100 epochs,
    restart at 80, min lr 1e-5, guide warm-up 50, batch 12)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    min_lr: float
    restart_epoch: int
    warmup_epochs: int
    # Extra noise-network updates per batch in the joint phase, on the batch's detached HGA
    # features and guide prediction (Adam at `diffusion_lr`, 0 = `lr`). CARD trains its
    # noise network for thousands of steps; a small cohort gives a few per epoch.
    diffusion_updates: int
    # Checkpoints are chosen (on validation) among epochs >= select_from only (and, for the
    # diffusion variant, after the warm-up): the first joint epochs' diffusion head is still
    # untrained noise, and a small validation split can rank noise highly by luck.
    select_from: int
    diffusion_lr: float
    # Exponential moving average of the weights (Polyak averaging, as DDPM/CARD train their
    # networks): validation, checkpoints and the test score use the averaged weights, which
    # vary far less from epoch to epoch than the raw ones on a small cohort. 0 = off.
    ema_decay: float
    seed: int
    device: str  # auto | cpu | cuda
    amp: str  # off | bf16 | fp16: autocast of the forward pass on CUDA
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    progress: bool  # tqdm bars (false in workflow logs)
    # platt | temperature | none: the map fitted on validation after training, the same for
    # every variant and baseline (mmfusion.train.recalibration)
    recalibration: str
    # diffusion variants: independent noise draws, besides the scored one, that measure the
    # Monte Carlo sd of each score (mmfusion.train.scoring; metrics.json monte_carlo)
    mc_replicates: int
    # deterministic kernels (torch.use_deterministic_algorithms, cudnn.deterministic,
    # CUBLAS_WORKSPACE_CONFIG): bit-identical reruns on one GPU; mmfusion.train.determinism
    deterministic: bool

    def __post_init__(self) -> None:
        if self.amp is False:  # YAML 1.1 reads a bare `off` as false
            object.__setattr__(self, "amp", "off")
        from mmfusion.train.recalibration import check_method

        check_method(self.recalibration)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> TrainConfig:
        """Build from a config section, failing on unknown keys."""
        # gpus_per_job is the workflow's resource request and seeds its number of training
        # runs per fold (`train fold --seed-index`), not training settings
        section = {k: v for k, v in (section or {}).items() if k not in cls.schema_unread}
        section = checked_section(cls, section, "train")
        if "augment" in section:
            section["augment"] = AugmentSettings(
                **checked_section(AugmentSettings, section["augment"], "train.augment"))
        return cls(**section)
