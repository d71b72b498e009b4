"""Conditional Feature-guided Diffusion, CFD (paper §2.3, eqs. 2–4 and 6), after CARD [7].

Classification diffusion over the one-hot label y0 (here 2 classes). The prior mean at
timestep T is the guide's class-probability prediction ŷ = f_phi(x) (CARD's y_0_hat; the
paper's notation uses f_phi(x) both for it and for the HGA features), and the noise network
eps_theta is conditioned on the HGA features and on ŷ. Timesteps are indexed 0..T-1 in
code (t = 1..T in the paper).

Forward (eq. 2):  y_t = sqrt(ᾱ_t) y0 + (1 - sqrt(ᾱ_t)) ŷ + sqrt(1 - ᾱ_t) ε.
Training (eq. 6): || ε - eps_theta(y_t, features, ŷ, t) ||², t drawn antithetically (CARD).
Reverse (eqs. 3–4), common random numbers across patients, in antithetic pairs
(`draw_noise`): y0 reparameterised from eps_theta (eq. 4), then CARD's exact posterior
q(y_{t-1} | y_t, y0, ŷ) (mean γ0 y0 + γ1 y_t + γ2 ŷ, variance β̃_t); the last step
returns the y0 reparameterisation. Each sample y0 becomes class probabilities
softmax(-(y0 - 1)²) as CARD does (or, with the monotone `difference` mapping,
sigmoid((y0[1] - y0[0]) / temperature)); probability = mean over samples, uncertainty =
their standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ConditionalLinear(nn.Module):
    """CARD's linear layer scaled by a learned per-timestep embedding.

    Forward: `(N, num_in)`, timesteps `(N,)` long -> `(N, num_out)`.
    """

    def __init__(self, num_in: int, num_out: int, n_steps: int) -> None:
        super().__init__()
        self.lin = nn.Linear(num_in, num_out)
        self.embed = nn.Embedding(n_steps, num_out)
        nn.init.uniform_(self.embed.weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.embed(t) * self.lin(x)


class NoiseNetwork(nn.Module):
    """eps_theta(y_t, x, ŷ, t): CARD's ConditionalModel with guidance, on feature vectors.

    Args:
        feature_dim: width of the conditioning features (HGA output).
        y_dim: number of classes.
        hidden: hidden width.
        n_steps: number of timestep embeddings (T + 1, as CARD).

    Forward: y_t `(N, y_dim)`, features `(N, feature_dim)`, ŷ `(N, y_dim)`, t `(N,)`
    -> predicted noise `(N, y_dim)`.
    """

    def __init__(self, feature_dim: int, y_dim: int = 2, hidden: int = 128,
                 n_steps: int = 11) -> None:
        super().__init__()
        self.encoder_x = nn.Linear(feature_dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.lin1 = ConditionalLinear(2 * y_dim, hidden, n_steps)
        self.unetnorm1 = nn.BatchNorm1d(hidden)
        self.lin2 = ConditionalLinear(hidden, hidden, n_steps)
        self.unetnorm2 = nn.BatchNorm1d(hidden)
        self.lin3 = ConditionalLinear(hidden, hidden, n_steps)
        self.unetnorm3 = nn.BatchNorm1d(hidden)
        self.lin4 = nn.Linear(hidden, y_dim)

    def forward(self, y_t: torch.Tensor, features: torch.Tensor, y_hat: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.encoder_x(features))
        y = F.softplus(self.unetnorm1(self.lin1(torch.cat([y_t, y_hat], dim=-1), t)))
        y = x * y
        y = F.softplus(self.unetnorm2(self.lin2(y, t)))
        y = F.softplus(self.unetnorm3(self.lin3(y, t)))
        return self.lin4(y)


@dataclass
class DiffusionPrediction:
    """probability `(B,)` of class 1, uncertainty `(B,)`, samples y0 `(B, S, y_dim)`."""

    probability: torch.Tensor
    uncertainty: torch.Tensor
    samples: torch.Tensor


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Schedule values at timesteps `t` `(N,)`, shaped `(N, 1)` to broadcast over classes."""
    return values.gather(0, t).unsqueeze(-1)


MAPPINGS = ("card", "difference")
TARGETS = ("noise", "y0")


class CFD(nn.Module):
    """CARD diffusion head: schedule buffers + noise network.

    Args:
        feature_dim: HGA feature width.
        timesteps: T (paper 10).
        beta_start, beta_end: linear β schedule ends (paper 0.01 → 0.95).
        hidden: noise network width.
        y_dim: number of classes (2).
        mapping: sample y0 -> class-1 probability. `card`: softmax(-(y0 - 1)²) as CARD
            (not monotone: a sample overshooting 1 scores lower, and it squeezes the range);
            `difference`: sigmoid((y0[1] - y0[0]) / temperature), monotone, the temperature
            fitted on validation data only (`fit_temperature`).
        target: what the network predicts. `noise`: eps (CARD, eq. 6), y0 recovered by eq. 4,
            which divides the prediction error by sqrt(ᾱ_t) (about 0.01 at t = T for the
            paper's 10-step schedule, so small errors swamp the signal); `y0`: the network
            predicts y0 directly (x0-parameterisation; loss MSE(y0)), same forward process,
            posterior and sampling.
    """

    def __init__(self, feature_dim: int, timesteps: int = 10, beta_start: float = 0.01,
                 beta_end: float = 0.95, hidden: int = 128, y_dim: int = 2,
                 mapping: str = "card", target: str = "noise") -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown diffusion target {target!r}; use one of {TARGETS}")
        self.target = target
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown probability mapping {mapping!r}; use one of {MAPPINGS}")
        self.mapping = mapping
        # temperature of the `difference` mapping; fitted on validation data after training
        self.register_buffer("temperature", torch.ones(()))
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.timesteps = timesteps
        self.y_dim = y_dim
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        alphas_bar = alphas.cumprod(0)
        alphas_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_bar[:-1]])
        for name, value in {
            "betas": betas,
            "alphas": alphas,
            "alphas_bar": alphas_bar,
            "sqrt_alphas_bar": alphas_bar.sqrt(),
            "sqrt_one_minus_alphas_bar": (1.0 - alphas_bar).sqrt(),
            # posterior q(y_{t-1} | y_t, y0, ŷ): CARD eq. (coefficients γ0, γ1, γ2, β̃_t)
            "gamma0": betas * alphas_bar_prev.sqrt() / (1.0 - alphas_bar),
            "gamma1": (1.0 - alphas_bar_prev) * alphas.sqrt() / (1.0 - alphas_bar),
            "gamma2": 1.0 + (alphas_bar.sqrt() - 1.0) * (alphas.sqrt() + alphas_bar_prev.sqrt())
            / (1.0 - alphas_bar),
            "posterior_variance": betas * (1.0 - alphas_bar_prev) / (1.0 - alphas_bar),
        }.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.noise_net = NoiseNetwork(feature_dim, y_dim, hidden, timesteps + 1)

    def q_sample(self, y0: torch.Tensor, y_hat: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        """Eq. 2: sample y_t `(N, y_dim)` from q(y_t | y0, ŷ) at timesteps `t` `(N,)`."""
        s = _at(self.sqrt_alphas_bar, t)
        return s * y0 + (1.0 - s) * y_hat + _at(self.sqrt_one_minus_alphas_bar, t) * noise

    def sample_timesteps(self, n: int, device: torch.device,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Antithetic timesteps `(n,)` in 0..T-1, as CARD draws them."""
        t = torch.randint(0, self.timesteps, (n // 2 + 1,), device=device, generator=generator)
        return torch.cat([t, self.timesteps - 1 - t])[:n]

    def loss(self, y0: torch.Tensor, features: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """Eq. 6: noise-prediction MSE (target `y0`: MSE of the predicted y0).

        y0 one-hot `(B, y_dim)`, features `(B, F)`, ŷ `(B, y_dim)` -> scalar.
        """
        t = self.sample_timesteps(y0.shape[0], y0.device)
        noise = torch.randn_like(y0)
        y_t = self.q_sample(y0, y_hat, t, noise)
        target = y0 if self.target == "y0" else noise
        return F.mse_loss(self.noise_net(y_t, features, y_hat, t), target)

    def y0_reparam(self, y_t: torch.Tensor, y_hat: torch.Tensor, eps: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """Eq. 4: y0 = (y_t - (1 - sqrt ᾱ_t) ŷ - sqrt(1 - ᾱ_t) eps) / sqrt ᾱ_t."""
        s = _at(self.sqrt_alphas_bar, t)
        return (y_t - (1.0 - s) * y_hat - _at(self.sqrt_one_minus_alphas_bar, t) * eps) / s

    def draw_noise(self, n_samples: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
        """The reverse process's Gaussian draws `(T, S, y_dim)`: row 0 for the prior y_T,
        row i for the posterior step that makes y_{T-1-i}. Antithetic pairs: sample
        ceil(S/2) + j uses the negated draws of sample j, so each sample is still an exact
        draw of the reverse process while the mean over samples (the probability) has a
        smaller Monte Carlo error than S independent samples (measured in
        `bench/bench_monte_carlo.py`). Drawn in one call on the generator's device (the CPU
        for `torch.Generator()`), so a seed gives the same draws on every device, then
        moved to `device`."""
        where = generator.device if generator is not None else device
        half = torch.randn((self.timesteps, (n_samples + 1) // 2, self.y_dim), device=where,
                           generator=generator)
        draw = torch.cat([half, -half], dim=1)[:, :n_samples]
        return draw.to(device) if device is not None else draw

    @torch.no_grad()
    def sample(self, features: torch.Tensor, y_hat: torch.Tensor, n_samples: int = 10,
               generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None,
               return_trajectory: bool = False, noise: torch.Tensor | None = None
               ) -> torch.Tensor | list[torch.Tensor]:
        """Reverse process (eq. 3), all patients and samples at once.

        Common random numbers: sample s of every patient uses the same draws `noise[:, s]`,
        so patients differ only by their features and ŷ (not by luck), and a patient's
        result never depends on its batch, its position in it or the batch size.

        Args:
            features: `(B, F)` HGA features; ŷ: `(B, y_dim)` guide probabilities.
            n_samples: samples S per patient.
            generator: draws the noise (`draw_noise`) when `noise` is not given.
            noise_fn: replaces eps_theta (tests use an oracle); signature as NoiseNetwork.
            return_trajectory: also return y_T … y_0.
            noise: the draws `(T, S, y_dim)` (`draw_noise`); S must equal `n_samples`.

        Returns:
            y0 samples `(B, S, y_dim)`, or the list [y_T, …, y_0] of such tensors.
        """
        b = features.shape[0]
        if noise is None:
            noise = self.draw_noise(n_samples, generator)
        if noise.shape != (self.timesteps, n_samples, self.y_dim):
            raise ValueError(f"noise of shape {tuple(noise.shape)}; need "
                             f"{(self.timesteps, n_samples, self.y_dim)}")
        noise = noise.to(device=features.device, dtype=y_hat.dtype)
        eps_fn = noise_fn or self.noise_net
        feats = features.repeat_interleave(n_samples, dim=0)  # (B*S, F)
        prior = y_hat.repeat_interleave(n_samples, dim=0)  # (B*S, y_dim)

        def gaussian(i: int) -> torch.Tensor:  # (B*S, y_dim), patient-major
            return noise[i].repeat(b, 1)

        y = prior + gaussian(0)  # y_T ~ N(ŷ, I)
        trajectory = [y]
        for i, step in enumerate(reversed(range(self.timesteps))):
            t = torch.full((b * n_samples,), step, dtype=torch.long, device=prior.device)
            if self.target == "y0" and noise_fn is None:
                y0 = self.noise_net(y, feats, prior, t)  # x0-parameterisation
            else:
                y0 = self.y0_reparam(y, prior, eps_fn(y, feats, prior, t), t)  # eq. 4
            if step == 0:
                y = y0
            else:
                mean = (_at(self.gamma0, t) * y0 + _at(self.gamma1, t) * y
                        + _at(self.gamma2, t) * prior)
                y = mean + _at(self.posterior_variance, t).sqrt() * gaussian(i + 1)
            trajectory.append(y)
        shaped = [s.reshape(b, n_samples, -1) for s in trajectory]
        return shaped if return_trajectory else shaped[-1]

    @torch.no_grad()
    def predict(self, features: torch.Tensor, y_hat: torch.Tensor, n_samples: int = 10,
                generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> DiffusionPrediction:
        """Class-1 probability (mean over samples) and uncertainty (sd over samples)."""
        samples = self.sample(features, y_hat, n_samples, generator, noise=noise)
        assert isinstance(samples, torch.Tensor)
        probs = self.sample_probabilities(samples)  # (B, S)
        spread = probs.std(dim=1, unbiased=False) if n_samples > 1 else torch.zeros_like(
            probs[:, 0])
        return DiffusionPrediction(probs.mean(dim=1), spread, samples)

    def sample_probabilities(self, samples: torch.Tensor,
                             temperature: torch.Tensor | float | None = None) -> torch.Tensor:
        """Class-1 probability of each y0 sample `(..., y_dim)` -> `(...)`."""
        if self.mapping == "card":
            return torch.softmax(-(samples - 1.0).square(), dim=-1)[..., 1]
        t = self.temperature if temperature is None else temperature
        return torch.sigmoid((samples[..., 1] - samples[..., 0]) / t)

    @torch.no_grad()
    def fit_temperature(self, samples: torch.Tensor, labels: torch.Tensor) -> float:
        """Set the `difference` mapping's temperature to the value (log grid 0.01..10) that
        minimises the BCE of the mean-over-samples probability. samples `(N, S, y_dim)` and
        labels `(N,)` must come from validation data. Returns the temperature."""
        if self.mapping != "difference" or samples.shape[0] == 0:
            return float(self.temperature)
        grid = torch.logspace(-2, 1, 61, device=samples.device)
        y = labels.float().to(samples.device)
        losses = [F.binary_cross_entropy(
            self.sample_probabilities(samples, t).mean(dim=1).clamp(1e-6, 1 - 1e-6), y)
            for t in grid]
        best = grid[int(torch.stack(losses).argmin())]
        self.temperature.fill_(best)
        return float(best)
