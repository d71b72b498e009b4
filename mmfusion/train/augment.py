"""Batched patch augmentation on tensors (supplement Table 2), applied on the device.

The paper uses TorchIO's RandomNoise (p=0.4), RandomBiasField (p=0.3), RandomFlip (p=0.6)
and RandomMotion (p=0.2), one patch at a time on the CPU. Here each transform acts on a
whole `(B, 1, D, H, W)` batch with a per-patient Bernoulli draw, so augmentation never
starves the model:

- flip: along one random spatial axis per patient;
- noise: additive Gaussian noise, sd uniform in [0, noise_std];
- bias field: a multiplicative smooth field exp(polynomial of order 2 in z, y, x);
- motion: a cheap stand-in for k-space motion artefacts — the patch blended with a copy
  shifted by a few voxels (ghosting), not TorchIO's k-space simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentSettings:
    """Probabilities and strengths (config `train.augment`); paper defaults."""

    flip: float = 0.6
    noise: float = 0.4
    bias_field: float = 0.3
    motion: float = 0.2
    noise_std: float = 0.1
    bias_coefficient: float = 0.3
    motion_shift: int = 2


def _draw(p: float, b: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(b, generator=gen) < p).to(device).view(b, 1, 1, 1, 1)


def augment(x: torch.Tensor, s: AugmentSettings, gen: torch.Generator | None = None
            ) -> torch.Tensor:
    """Augment a batch `(B, 1, D, H, W)`; random numbers come from CPU generator `gen`."""
    b, device = x.shape[0], x.device
    if s.flip > 0:
        axis = torch.randint(2, 5, (b,), generator=gen)
        do = _draw(s.flip, b, gen, device)
        for dim in (2, 3, 4):
            pick = do & (axis == dim).to(device).view(b, 1, 1, 1, 1)
            x = torch.where(pick, x.flip(dim), x)
    if s.noise > 0:
        sd = (torch.rand(b, generator=gen) * s.noise_std).to(device).view(b, 1, 1, 1, 1)
        noise = torch.randn(x.shape, generator=gen).to(device)
        x = torch.where(_draw(s.noise, b, gen, device), x + sd * noise, x)
    if s.bias_field > 0:
        grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in x.shape[2:]], indexing="ij")
        z, y, w = (g.to(device) for g in grids)
        basis = torch.stack([z, y, w, z * y, z * w, y * w, z * z, y * y, w * w])  # (9, D, H, W)
        coef = ((torch.rand(b, 9, generator=gen) * 2 - 1) * s.bias_coefficient).to(device)
        field = torch.exp(torch.einsum("bk,kdhw->bdhw", coef, basis)).unsqueeze(1)
        x = torch.where(_draw(s.bias_field, b, gen, device), x * field, x)
    if s.motion > 0 and s.motion_shift > 0:
        shift = int(torch.randint(1, s.motion_shift + 1, (1,), generator=gen))
        dim = int(torch.randint(2, 5, (1,), generator=gen))
        alpha = (torch.rand(b, generator=gen) * 0.3).to(device).view(b, 1, 1, 1, 1)
        ghost = (1 - alpha) * x + alpha * x.roll(shift, dims=dim)
        x = torch.where(_draw(s.motion, b, gen, device), ghost, x)
    return x
