"""Exponential moving average of a model's weights (`train.ema_decay`)."""

from __future__ import annotations

import copy

import torch

from mmfusion.errors import ConfigError


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
