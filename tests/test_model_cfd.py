"""CFD: the schedule, eq. 2 moments, and the reverse loop with an oracle noise predictor."""

from __future__ import annotations

import pytest
import torch

from mmfusion.model.cfd import CFD


def make(**kw) -> CFD:
    torch.manual_seed(0)
    return CFD(feature_dim=6, hidden=16, **kw)


def test_schedule_buffers_follow_config():
    cfd = make(timesteps=10, beta_start=0.01, beta_end=0.95)
    assert torch.allclose(cfd.betas, torch.linspace(0.01, 0.95, 10))
    assert torch.allclose(cfd.alphas_bar, torch.cumprod(1 - cfd.betas, 0))
    assert "betas" in dict(cfd.named_buffers())
    # CARD's posterior coefficients: y_{t-1} mean is exact when y0 is known
    y0, prior = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.3, 0.7]])
    t = torch.tensor([4])
    ab, ab_prev = cfd.alphas_bar[4], cfd.alphas_bar[3]
    y_t = cfd.q_sample(y0, prior, t, torch.zeros_like(y0))
    mean = cfd.gamma0[4] * y0 + cfd.gamma1[4] * y_t + cfd.gamma2[4] * prior
    # with zero noise, E[y_{t-1} | y_t, y0] lies on the deterministic path of eq. 2
    expect = ab_prev.sqrt() * y0 + (1 - ab_prev.sqrt()) * prior
    assert torch.allclose(mean, expect, atol=1e-5) and ab < ab_prev


def test_q_sample_moments_match_eq2():
    cfd = make()
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    y0 = torch.tensor([0.0, 1.0]).expand(n, 2)
    prior = torch.tensor([0.8, 0.2]).expand(n, 2)
    for step in (0, 4, 9):
        t = torch.full((n,), step, dtype=torch.long)
        y_t = cfd.q_sample(y0, prior, t, torch.randn(n, 2, generator=gen))
        ab = cfd.alphas_bar[step]
        mean = ab.sqrt() * y0[0] + (1 - ab.sqrt()) * prior[0]
        assert torch.allclose(y_t.mean(0), mean, atol=0.01)
        assert torch.allclose(y_t.var(0), (1 - ab).expand(2), rtol=0.02)


def oracle(cfd: CFD, y0: torch.Tensor, n_samples: int):
    """The true noise that turns y0 into y_t under eq. 2 (inverts eq. 2 for ε)."""
    y0_rep = y0.repeat_interleave(n_samples, dim=0)

    def eps(y_t, feats, prior, t):
        s = cfd.sqrt_alphas_bar.gather(0, t).unsqueeze(-1)
        return (y_t - s * y0_rep - (1 - s) * prior) / cfd.sqrt_one_minus_alphas_bar.gather(
            0, t).unsqueeze(-1)

    return eps


def test_reverse_loop_with_oracle_returns_y0():
    cfd = make().eval()
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    prior = torch.tensor([[0.4, 0.6], [0.9, 0.1], [0.5, 0.5]])
    feats = torch.randn(3, 6)
    traj = cfd.sample(feats, prior, n_samples=5, generator=torch.Generator().manual_seed(0),
                      noise_fn=oracle(cfd, y0, 5), return_trajectory=True)
    assert len(traj) == cfd.timesteps + 1
    assert torch.allclose(traj[-1], y0[:, None, :].expand(3, 5, 2), atol=1e-4)


def test_predict_shapes_and_seeded_sampling():
    cfd = make().eval()
    feats, prior = torch.randn(4, 6), torch.softmax(torch.randn(4, 2), -1)
    a = cfd.predict(feats, prior, 7, torch.Generator().manual_seed(1))
    b = cfd.predict(feats, prior, 7, torch.Generator().manual_seed(1))
    assert a.samples.shape == (4, 7, 2) and a.probability.shape == (4,)
    assert torch.equal(a.probability, b.probability)
    # CARD's mapping of each sample: softmax(-(y0 - 1)²), class 1; mean and (population) sd
    per_sample = torch.softmax(-(a.samples - 1).square(), dim=-1)[..., 1]
    torch.testing.assert_close(a.probability, per_sample.mean(1))
    torch.testing.assert_close(a.uncertainty, per_sample.std(1, unbiased=False))
    assert (a.uncertainty > 0).all()


def test_loss_trains_noise_network():
    cfd = make().train()
    y0 = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 2).float()
    loss = cfd.loss(y0, torch.randn(4, 6), torch.full((4, 2), 0.5))
    loss.backward()
    assert loss.item() > 0 and cfd.noise_net.lin4.weight.grad is not None
    t = cfd.sample_timesteps(5, torch.device("cpu"))
    assert t.shape == (5,) and int(t[0] + t[3]) == cfd.timesteps - 1  # antithetic pairs


def test_common_random_numbers_make_a_patient_independent_of_its_batch():
    cfd = make().eval()
    feats, y_hat = torch.randn(5, 6), torch.softmax(torch.randn(5, 2), -1)
    full = cfd.predict(feats, y_hat, 8, torch.Generator().manual_seed(3))
    part = cfd.predict(feats[2:4], y_hat[2:4], 8, torch.Generator().manual_seed(3))
    torch.testing.assert_close(full.probability[2:4], part.probability)
    torch.testing.assert_close(full.uncertainty[2:4], part.uncertainty)


def test_difference_mapping_is_monotone_and_temperature_fits_validation():
    cfd = make(mapping="difference")
    d = torch.linspace(-3, 3, 13)
    samples = torch.stack([torch.zeros_like(d), d], -1)  # y0[1] - y0[0] = d
    p = cfd.sample_probabilities(samples)
    assert (p.diff() > 0).all()  # monotone, unlike CARD's softmax(-(y0 - 1)^2)
    card = make().sample_probabilities(samples)
    assert not (card.diff() > 0).all()
    # well-separated samples -> a sharp (small) temperature lowers the BCE
    labels = torch.tensor([0, 1] * 10)
    s = torch.stack([torch.zeros(20), (labels * 2 - 1) * 0.5], -1).unsqueeze(1)
    t = cfd.fit_temperature(s, labels)
    assert t < 0.2 and float(cfd.temperature) == t
    assert make().fit_temperature(s, labels) == 1.0  # card mapping: no temperature


def test_y0_target_trains_on_y0_and_samples_with_its_prediction():
    cfd = make(target="y0")

    class Oracle(torch.nn.Module):  # predicts the true y0 of each row
        def forward(self, y_t, feats, y_hat, t):
            return torch.nn.functional.one_hot((feats[:, 0] > 0).long(), 2).float()

    cfd.noise_net = Oracle()
    feats = torch.randn(6, 6)
    y0 = torch.nn.functional.one_hot((feats[:, 0] > 0).long(), 2).float()
    assert float(cfd.loss(y0, feats, torch.full((6, 2), 0.5))) == 0.0
    out = cfd.sample(feats, torch.full((6, 2), 0.5), 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, y0.unsqueeze(1).expand(-1, 4, -1))


# ---- the maths against closed forms derived here, not read back from the code ----------

def schedule(timesteps: int = 10, beta_start: float = 0.01, beta_end: float = 0.95):
    """β_t and ᾱ_t (float64) from the linear schedule's definition, code indices 0..T-1."""
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return betas, torch.cumprod(1 - betas, 0)


def posterior(step: int, y_t, y0, y_hat):
    """Mean and variance of q(y_{t-1} | y_t, y0, ŷ) by Gaussian conditioning.

    Under eq. 2, y_{t-1} ~ N(m1, v1) with m1 = sqrt(ᾱ_{t-1}) y0 + (1 - sqrt(ᾱ_{t-1})) ŷ,
    v1 = 1 - ᾱ_{t-1}; one forward step y_t = sqrt(α_t) y_{t-1} + (1 - sqrt(α_t)) ŷ
    + sqrt(β_t) ε gives Cov(y_{t-1}, y_t) = sqrt(α_t) v1 and Var(y_t) = 1 - ᾱ_t, so
    E[y_{t-1} | y_t] = m1 + sqrt(α_t) v1 / (1 - ᾱ_t) (y_t - m_t) and
    Var[y_{t-1} | y_t] = v1 - α_t v1² / (1 - ᾱ_t). Returns (mean, variance, d mean / d y0).
    """
    betas, ab = schedule()
    ab_t, ab_prev, a_t = ab[step], ab[step - 1], 1 - betas[step]
    m1 = ab_prev.sqrt() * y0 + (1 - ab_prev.sqrt()) * y_hat
    m_t = ab_t.sqrt() * y0 + (1 - ab_t.sqrt()) * y_hat
    gain = a_t.sqrt() * (1 - ab_prev) / (1 - ab_t)
    mean = m1 + gain * (y_t - m_t)
    var = (1 - ab_prev) - a_t * (1 - ab_prev) ** 2 / (1 - ab_t)
    return mean, var, ab_prev.sqrt() - gain * ab_t.sqrt()


def exact_eps(y_t, y0, y_hat, t):
    """The ε that eq. 2 used to make y_t from y0 and ŷ at timesteps t (schedule above)."""
    _, ab = schedule()
    s = ab.sqrt()[t].unsqueeze(-1)
    return (y_t.double() - s * y0 - (1 - s) * y_hat) / (1 - ab[t]).sqrt().unsqueeze(-1)


PATIENTS_Y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
PATIENTS_YHAT = torch.tensor([[0.3, 0.7], [0.9, 0.1]], dtype=torch.float64)


def trajectory(cfd: CFD, n: int, offset: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Reverse trajectories [y_T, ..., y_0] `(2, n, 2)` float64 of the two patients above,
    with the exact noise predictor (plus a constant `offset`, if given)."""
    y0 = PATIENTS_Y0.repeat_interleave(n, dim=0)

    def eps(y_t, feats, prior, t):
        e = exact_eps(y_t, y0, prior.double(), t)
        return (e if offset is None else e + offset).float()

    traj = cfd.sample(torch.zeros(2, 6), PATIENTS_YHAT.float(), n_samples=n,
                      generator=torch.Generator().manual_seed(11), noise_fn=eps,
                      return_trajectory=True)
    return [y.double() for y in traj]


def test_reverse_step_matches_card_posterior_mean_and_variance():
    """Monte Carlo over 40 000 samples per patient: every reverse step y_t -> y_{t-1} draws
    from q(y_{t-1} | y_t, y0, ŷ) (exact ε): residuals against the closed-form mean have zero
    mean, no slope in y_t, and variance β̃_t = (1 - ᾱ_{t-1}) β_t / (1 - ᾱ_t)."""
    cfd = make().eval()
    n = 40_000
    traj = trajectory(cfd, n)
    betas, ab = schedule()
    # y_T ~ N(ŷ, I), CARD's prior
    torch.testing.assert_close(traj[0].mean(1), PATIENTS_YHAT, atol=0.03, rtol=0)
    torch.testing.assert_close(traj[0].var(1), torch.ones(2, 2, dtype=torch.float64),
                               atol=0.04, rtol=0)
    for k, step in enumerate(range(cfd.timesteps - 1, 0, -1)):
        y_t, y_prev = traj[k], traj[k + 1]
        mean, var, _ = posterior(step, y_t, PATIENTS_Y0[:, None], PATIENTS_YHAT[:, None])
        assert torch.isclose(var, (1 - ab[step - 1]) * betas[step] / (1 - ab[step]))
        resid = y_prev - mean  # (2 patients, n, 2 classes)
        sd = float(var.sqrt())
        assert resid.mean(1).abs().max() < 5 * sd / n**0.5, (step, resid.mean(1))
        torch.testing.assert_close(resid.var(1), var.expand(2, 2), rtol=0.05, atol=0)
        # no dependence on y_t left over (γ1 right): correlation within sampling error
        centred = y_t - y_t.mean(1, keepdim=True)
        corr = (resid * centred).mean(1) / (resid.std(1) * centred.std(1))
        assert corr.abs().max() < 5 / n**0.5, (step, corr)
    # the last step returns the y0 reparameterisation: exactly y0
    torch.testing.assert_close(traj[-1], PATIENTS_Y0[:, None].expand(2, n, 2), atol=1e-4,
                               rtol=0)


def test_reverse_loop_with_constant_offset_predictor_has_the_predicted_bias():
    """ε_θ = ε + c: eq. 4 returns y0 - c sqrt(1 - ᾱ_t) / sqrt(ᾱ_t), so every reverse step's
    mean moves by -(d mean / d y0) c sqrt(1 - ᾱ_t) / sqrt(ᾱ_t), its variance does not
    change, and the final sample is y0 - c sqrt(β_1 / (1 - β_1)) for every draw."""
    cfd = make().eval()
    n = 40_000
    c = torch.tensor([0.5, -0.25], dtype=torch.float64)
    traj = trajectory(cfd, n, offset=c)
    betas, ab = schedule()
    for k, step in enumerate(range(cfd.timesteps - 1, 0, -1)):
        y_t, y_prev = traj[k], traj[k + 1]
        mean, var, d_y0 = posterior(step, y_t, PATIENTS_Y0[:, None], PATIENTS_YHAT[:, None])
        bias = -d_y0 * c * ((1 - ab[step]) / ab[step]).sqrt()
        resid = y_prev - mean
        sd = float(var.sqrt())
        torch.testing.assert_close(resid.mean(1), bias.expand(2, 2),
                                   atol=5 * sd / n**0.5 + 1e-4, rtol=0)
        torch.testing.assert_close(resid.var(1), var.expand(2, 2), rtol=0.05, atol=0)
    final = PATIENTS_Y0 - c * (betas[0] / (1 - betas[0])).sqrt()
    torch.testing.assert_close(traj[-1], final[:, None].expand(2, n, 2), atol=1e-4, rtol=0)


class ExactPredictor(torch.nn.Module):
    """An exact network for eq. 6: the features carry y0 (feature_dim = y_dim); predicts the
    true ε (target noise) or y0 itself (target y0), plus `offset`."""

    def __init__(self, target: str, offset: float = 0.0) -> None:
        super().__init__()
        self.target, self.offset = target, offset

    def forward(self, y_t, feats, y_hat, t):
        y0 = feats.double()
        out = y0 if self.target == "y0" else exact_eps(y_t, y0, y_hat.double(), t)
        return (out + self.offset).float()


@pytest.mark.parametrize("target", ["noise", "y0"])
def test_eq6_loss_is_zero_for_an_exact_predictor_and_a_mean_square(target):
    torch.manual_seed(0)
    cfd = CFD(feature_dim=2, hidden=8, target=target)
    labels = torch.arange(64) % 2
    y0 = torch.nn.functional.one_hot(labels, 2).float()
    y_hat = torch.softmax(torch.randn(64, 2), -1)
    cfd.noise_net = ExactPredictor(target)
    assert float(cfd.loss(y0, y0, y_hat)) < 1e-9  # ε recovered from y_t with eq. 2's maths
    cfd.noise_net = ExactPredictor(target, offset=0.5)
    assert float(cfd.loss(y0, y0, y_hat)) == pytest.approx(0.25, abs=1e-6)  # mean of 0.5²
    # the other target's exact predictor is not exact for this target
    other = ExactPredictor("y0" if target == "noise" else "noise")
    cfd.noise_net = other
    assert float(cfd.loss(y0, y0, y_hat)) > 0.05
