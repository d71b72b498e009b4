"""CFD: the schedule, eq. 2 moments, and the reverse loop with an oracle noise predictor."""

from __future__ import annotations

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
    assert ((a.probability >= 0) & (a.probability <= 1)).all() and (a.uncertainty > 0).all()


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
