"""Batched augmentation: reproducible, input untouched, equal to the all-rows formulation."""

from __future__ import annotations

import torch

from mmfusion.train.augment import AugmentSettings, augment


def _reference(x: torch.Tensor, s: AugmentSettings, gen: torch.Generator) -> torch.Tensor:
    """Every transform on every row, kept where the patient's draw hits (same draw order)."""
    b = x.shape[0]

    def draw() -> torch.Tensor:
        return (torch.rand(b, generator=gen) < p).view(b, 1, 1, 1, 1)

    axis = torch.randint(2, 5, (b,), generator=gen)
    p = s.flip
    do = draw()
    for dim in (2, 3, 4):
        x = torch.where(do & (axis == dim).view(b, 1, 1, 1, 1), x.flip(dim), x)
    sd = (torch.rand(b, generator=gen) * s.noise_std).view(b, 1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen)
    p = s.noise
    x = torch.where(draw(), x + sd * noise, x)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in x.shape[2:]], indexing="ij")
    z, y, w = grids
    basis = torch.stack([z, y, w, z * y, z * w, y * w, z * z, y * y, w * w])
    coef = (torch.rand(b, 9, generator=gen) * 2 - 1) * s.bias_coefficient
    field = torch.exp(torch.einsum("bk,kdhw->bdhw", coef, basis)).unsqueeze(1)
    p = s.bias_field
    x = torch.where(draw(), x * field, x)
    shift = int(torch.randint(1, s.motion_shift + 1, (1,), generator=gen))
    dim = int(torch.randint(2, 5, (1,), generator=gen))
    alpha = (torch.rand(b, generator=gen) * 0.3).view(b, 1, 1, 1, 1)
    p = s.motion
    return torch.where(draw(), (1 - alpha) * x + alpha * x.roll(shift, dims=dim), x)


def test_augment_matches_reference_and_is_reproducible():
    s = AugmentSettings()
    x = torch.rand(9, 1, 6, 10, 8)
    before = x.clone()
    g1, g2, g3 = (torch.Generator().manual_seed(7) for _ in range(3))
    for _ in range(10):
        out = augment(x, s, g1)
        ref = _reference(x, s, g2)
        assert torch.equal(x, before)
        assert out.shape == x.shape and torch.allclose(out, ref, atol=1e-6)
        assert torch.equal(out, augment(x, s, g3))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_augment_disabled_is_identity():
    s = AugmentSettings(flip=0, noise=0, bias_field=0, motion=0)
    x = torch.rand(3, 1, 4, 5, 6)
    assert torch.equal(augment(x, s, torch.Generator().manual_seed(0)), x)


# ---- each transform against its definition ----------------------------------------------

OFF = dict(flip=0.0, noise=0.0, bias_field=0.0, motion=0.0)


def only(**kw) -> AugmentSettings:
    return AugmentSettings(**{**OFF, **kw})


def test_flip_is_an_involution_along_one_spatial_axis():
    x = torch.randn(90, 1, 5, 6, 7)
    s = only(flip=1.0)
    out = augment(x, s, torch.Generator().manual_seed(3))
    axes = []
    for xi, oi in zip(x, out, strict=True):  # (1, D, H, W): spatial dims 1, 2, 3
        hits = [d for d in (1, 2, 3) if torch.equal(oi, xi.flip(d))]
        assert len(hits) == 1, hits
        axes.append(hits[0])
    assert sorted(set(axes)) == [1, 2, 3]  # every axis gets its turn
    # the same draws again flip every patient back
    assert torch.equal(augment(out, s, torch.Generator().manual_seed(3)), x)
    # with p = 0.6 about 60 % of the patients are flipped, the others untouched
    x = torch.randn(400, 1, 3, 4, 5)
    out = augment(x, only(flip=0.6), torch.Generator().manual_seed(4))
    changed = (out != x).flatten(1).any(1).float().mean()
    assert abs(float(changed) - 0.6) < 0.1


def test_noise_is_zero_mean_gaussian_with_sd_uniform_up_to_noise_std():
    sigma, b, n = 0.2, 300, 8 * 8 * 8
    x = torch.rand(b, 1, 8, 8, 8)
    added = (augment(x, only(noise=1.0, noise_std=sigma), torch.Generator().manual_seed(5))
             - x).flatten(1).double()
    sd = added.std(1)
    assert (added.mean(1).abs() <= 5 * sd / n**0.5 + 1e-7).all()  # zero mean per patient
    assert float(sd.max()) <= sigma * (1 + 5 / (2 * n) ** 0.5)  # never above noise_std
    # sd ~ U(0, noise_std): mean noise_std / 2, range nearly all of it
    assert abs(float(sd.mean()) - sigma / 2) < 0.015
    assert float(sd.max()) > 0.95 * sigma and float(sd.min()) < 0.05 * sigma
    z = added / sd[:, None]  # Gaussian: kurtosis 3 (uniform noise: 1.8)
    assert abs(float(z.pow(4).mean()) - 3) < 0.1
    # with p = 0.4 about 40 % of the patients get noise
    out = augment(x, only(noise=0.4), torch.Generator().manual_seed(6))
    assert abs(float((out != x).flatten(1).any(1).float().mean()) - 0.4) < 0.1


def test_bias_field_is_exp_of_a_bounded_order_two_polynomial():
    """field = exp(Σ c_k m_k): monomials m_k of degree 1..2 in z, y, x on [-1, 1], each
    |c_k| <= bias_coefficient, no constant (no global gain)."""
    c = 0.3
    shape = (6, 7, 8)
    field = augment(torch.ones(200, 1, *shape), only(bias_field=1.0, bias_coefficient=c),
                    torch.Generator().manual_seed(7))
    assert (field > 0).all()
    z, y, w = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64)
                               for n in shape], indexing="ij")
    design = torch.stack([torch.ones_like(z), z, y, w, z * y, z * w, y * w, z * z, y * y,
                          w * w], -1).reshape(-1, 10)
    log_field = field.double().log().reshape(200, -1).T  # (voxels, patients)
    coef = torch.linalg.lstsq(design, log_field).solution  # (10, patients)
    assert float((design @ coef - log_field).abs().max()) < 1e-5  # exactly order 2
    assert float(coef[0].abs().max()) < 1e-5
    assert float(coef[1:].abs().max()) <= c + 1e-5
    assert float(coef[1:].abs().max()) > 0.95 * c  # the range is used
    assert float(log_field.abs().max()) <= 9 * c


def test_motion_ghost_is_a_bounded_shift_blended_in():
    """out = (1 - a) x + a roll(x, k, axis) with 1 <= k <= motion_shift, 0 <= a <= 0.3."""
    shift_max = 2
    x = torch.randn(6, 1, 12, 14, 16, dtype=torch.float64)
    seen = set()
    for seed in range(25):  # the shift and axis are drawn once per batch
        out = augment(x, only(motion=1.0, motion_shift=shift_max),
                      torch.Generator().manual_seed(seed))
        for xi, oi in zip(x, out, strict=True):
            best = None
            for dim in (1, 2, 3):
                for k in range(-5, 6):
                    if k == 0:
                        continue
                    ghost = xi.roll(k, dims=dim) - xi
                    a = float(((oi - xi) * ghost).sum() / ghost.square().sum())
                    err = float((oi - xi - a * ghost).abs().max())
                    if best is None or err < best[0]:
                        best = (err, dim, k, a)
            err, dim, k, a = best
            assert err < 1e-6, best  # the weight a is drawn in float32
            assert 1 <= k <= shift_max and 0 <= a <= 0.3, best
            seen.add((dim, k))
    assert {k for _, k in seen} == {1, 2} and {d for d, _ in seen} == {1, 2, 3}
