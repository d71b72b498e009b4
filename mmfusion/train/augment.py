"""Batched patch augmentation on tensors (supplement Table 2), applied on the device.

The paper uses TorchIO's RandomNoise (p=0.4), RandomBiasField (p=0.3), RandomFlip (p=0.6)
and RandomMotion (p=0.2), one patch at a time on the CPU. Here each transform acts on a
whole `(B, 1, D, H, W)` batch with a per-patient Bernoulli draw, so augmentation never
starves the model:

- flip: along one random spatial axis per patient;
- noise: additive Gaussian noise, sd uniform in [0, noise_std];
- bias field: a multiplicative smooth field exp(polynomial of order 2 in z, y, x on
  [-1, 1]^3, no constant term, each coefficient uniform in ±bias_coefficient);
- motion: a cheap stand-in for k-space motion artefacts — the patch blended with a copy
  shifted by 1..motion_shift voxels along one axis (ghosting; ghost weight uniform in
  [0, 0.3)), not TorchIO's k-space simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmfusion.settings import schema_defaults


@dataclass(frozen=True)
@schema_defaults("train.augment")
class AugmentSettings:
    """Probabilities and strengths (config `train.augment`; defaults: the config schema,
    the paper's probabilities)."""

    flip: float
    noise: float
    bias_field: float
    motion: float
    noise_std: float
    bias_coefficient: float
    motion_shift: int


def _rows(p: float, b: int, gen: torch.Generator | None) -> torch.Tensor:
    """Indices (CPU) of the patients whose Bernoulli(p) draw hits."""
    return (torch.rand(b, generator=gen) < p).nonzero(as_tuple=True)[0]


_BASIS: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}


def _bias_basis(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Order-2 polynomial basis `(9, D, H, W)` on [-1, 1]^3, cached per shape and device."""
    key = (shape, str(device))
    if key not in _BASIS:
        grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
        z, y, w = (g.to(device) for g in grids)
        _BASIS[key] = torch.stack([z, y, w, z * y, z * w, y * w, z * z, y * y, w * w])
    return _BASIS[key]


def augment(x: torch.Tensor, s: AugmentSettings, gen: torch.Generator | None = None
            ) -> torch.Tensor:
    """Augment a batch `(B, 1, D, H, W)`; random numbers come from CPU generator `gen`.

    Every random number is drawn for the whole batch, in a fixed order, whatever the draws
    pick, so results are reproducible from the generator's state; each transform then
    computes only the rows (patients) it applies to. The input is not modified.
    """
    b, device = x.shape[0], x.device
    x = x.clone()

    def dev(idx: torch.Tensor) -> torch.Tensor:
        return idx.to(device)

    if s.flip > 0:
        axis = torch.randint(2, 5, (b,), generator=gen)
        do = torch.rand(b, generator=gen) < s.flip
        for dim in (2, 3, 4):
            rows = (do & (axis == dim)).nonzero(as_tuple=True)[0]
            if rows.numel():
                r = dev(rows)
                x[r] = x[r].flip(dim)
    if s.noise > 0:
        sd = torch.rand(b, generator=gen) * s.noise_std
        noise = torch.randn(x.shape, generator=gen)
        rows = _rows(s.noise, b, gen)
        if rows.numel():
            r = dev(rows)
            x[r] = x[r] + sd[rows].to(device).view(-1, 1, 1, 1, 1) * noise[rows].to(device)
    if s.bias_field > 0:
        coef = (torch.rand(b, 9, generator=gen) * 2 - 1) * s.bias_coefficient
        rows = _rows(s.bias_field, b, gen)
        if rows.numel():
            r = dev(rows)
            basis = _bias_basis(tuple(x.shape[2:]), device)
            field = torch.exp(torch.einsum("bk,kdhw->bdhw", coef[rows].to(device), basis))
            x[r] = x[r] * field.unsqueeze(1)
    if s.motion > 0 and s.motion_shift > 0:
        shift = int(torch.randint(1, s.motion_shift + 1, (1,), generator=gen))
        dim = int(torch.randint(2, 5, (1,), generator=gen))
        alpha = torch.rand(b, generator=gen) * 0.3
        rows = _rows(s.motion, b, gen)
        if rows.numel():
            r = dev(rows)
            a = alpha[rows].to(device).view(-1, 1, 1, 1, 1)
            xr = x[r]
            x[r] = (1 - a) * xr + a * xr.roll(shift, dims=dim)
    return x
