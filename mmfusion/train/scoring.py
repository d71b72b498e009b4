"""The one scoring function: a split of patients -> probabilities, for every caller.

Training's validation scoring and checkpoint choice, the temperature and recalibration fits,
the test scores, `mmfusion predict`, Fig. 3's reverse trajectories and the benchmarks all
call `score_split`, so a patient gets the same probability wherever it is scored.

Noise scheme (diffusion variants): common random numbers. The reverse process's Gaussian
draws `(T, S, 2)` are drawn once per call from `torch.Generator().manual_seed(seed)` (the
fold's training seed, on the CPU, then moved to the device) and sample s of **every**
patient uses draws `[:, s]`. So a patient's probability depends only on the model, the
seed and the patient: never on the batch it is in, the batch size, the split's order or the
other patients scored with it.

Monte Carlo error: the probability is a mean over S reverse-process samples, an estimate of
the posterior mean with its own sampling error. `replicates=R` also scores every patient
under R more independent draws (seeds from `replicate_seeds`; the guide runs once per batch,
only the diffusion head reruns) so the spread of a patient's probability over draws can be
measured (`monte_carlo_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmfusion.model.mmfusion import MMFusionModel
from mmfusion.train.dataset import SplitData
from mmfusion.train.device import Precision


@dataclass
class SplitScores:
    """What `score_split` gives for the N patients of a split, in split order.

    `probability` `(N,)`: the model's own (raw) probability, the mean over samples;
    `uncertainty` `(N,)`: sd over samples (0 without diffusion); `sample_probability`
    `(N, S)`: each sample's class-1 probability (S = 1 without diffusion); `samples`
    `(N, S, y_dim)`: the y0 samples (diffusion only); `trajectory` `(T + 1, N, y_dim)`: the
    mean over samples of y_t for t = T..0 (when asked); `replicates` `(R, N)`: the
    probability under R independent noise draws (when asked).
    """

    probability: np.ndarray
    uncertainty: np.ndarray
    sample_probability: np.ndarray
    samples: np.ndarray | None = None
    trajectory: np.ndarray | None = None
    replicates: np.ndarray | None = None


def replicate_seeds(seed: int, n: int) -> list[int]:
    """`n` seeds for independent noise draws, derived from `seed` (never equal to it in
    practice: numpy's SeedSequence hashes (seed, r))."""
    return [int(np.random.SeedSequence([int(seed), r + 1]).generate_state(1)[0])
            for r in range(n)]


def diffusion_noise(model: MMFusionModel, seed: int, device: torch.device) -> torch.Tensor:
    """The common random numbers `(T, S, y_dim)` of `seed` for `model`'s diffusion head."""
    gen = torch.Generator().manual_seed(int(seed))
    return model.cfd.draw_noise(model.cfg.n_samples, gen, device)


def _empty(model: MMFusionModel, trajectory: bool, replicates: int) -> SplitScores:
    s = model.cfg.n_samples if model.use_cfd else 1
    y_dim = model.cfd.y_dim if model.use_cfd else 2
    return SplitScores(
        np.zeros(0), np.zeros(0), np.zeros((0, s)),
        np.zeros((0, s, y_dim)) if model.use_cfd else None,
        np.zeros((model.cfd.timesteps + 1, 0, y_dim)) if trajectory and model.use_cfd
        else None,
        np.zeros((replicates, 0)) if replicates and model.use_cfd else None)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


@torch.no_grad()
def score_split(model: MMFusionModel, split: SplitData, batch_size: int,
                device: torch.device, seed: int, precision: Precision | None = None, *,
                trajectory: bool = False, replicates: int = 0) -> SplitScores:
    """Score every patient of `split` with `model` in eval mode (the backbones under
    `precision`'s autocast when given), `batch_size` patients at a time; see the module
    docstring for the noise. `trajectory`: also keep the reverse trajectory (diffusion
    only); `replicates`: also score under that many independent noise draws."""
    model.eval()
    precision = precision or Precision()
    use_cfd = model.use_cfd
    if use_cfd:
        noise = diffusion_noise(model, seed, device)
        extra = [diffusion_noise(model, s, device)
                 for s in replicate_seeds(seed, replicates)]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("p", "u", "sp", "y0", "traj", "rep")}
    for batch in split.batches(batch_size, device):
        out = model(precision.image_maps(model, batch))
        if not use_cfd:
            p = torch.sigmoid(out.logit)
            parts["p"].append(_numpy(p))
            parts["u"].append(np.zeros(len(p), np.float32))
            parts["sp"].append(_numpy(p)[:, None])
            continue
        y_hat = model.guide_probabilities(out.logit)
        n_samples = model.cfg.n_samples
        path = model.cfd.sample(out.features, y_hat, n_samples, noise=noise,
                                return_trajectory=True)
        assert isinstance(path, list)
        y0 = path[-1]
        probs = model.cfd.sample_probabilities(y0)  # (B, S)
        parts["p"].append(_numpy(probs.mean(dim=1)))
        parts["u"].append(_numpy(probs.std(dim=1, unbiased=False)) if n_samples > 1
                          else np.zeros(len(probs), np.float32))
        parts["sp"].append(_numpy(probs))
        parts["y0"].append(_numpy(y0))
        if trajectory:
            parts["traj"].append(_numpy(torch.stack(path).mean(dim=2)))
        if extra:
            parts["rep"].append(np.stack([_numpy(model.cfd.sample_probabilities(
                model.cfd.sample(out.features, y_hat, n_samples, noise=e)).mean(dim=1))
                for e in extra]))
    if not parts["p"]:
        return _empty(model, trajectory, replicates)
    return SplitScores(
        probability=np.concatenate(parts["p"]).astype(np.float64),
        uncertainty=np.concatenate(parts["u"]).astype(np.float64),
        sample_probability=np.concatenate(parts["sp"]).astype(np.float64),
        samples=np.concatenate(parts["y0"]) if parts["y0"] else None,
        trajectory=np.concatenate(parts["traj"], axis=1) if parts["traj"] else None,
        replicates=(np.concatenate(parts["rep"], axis=1).astype(np.float64)
                    if parts["rep"] else None))


def monte_carlo_sd(probability: np.ndarray, replicates: np.ndarray,
                   transform=None) -> np.ndarray:
    """Per patient `(N,)`: the sample sd (ddof 1) of its probability over the scored draw
    and the R replicate draws, after `transform` (e.g. the fold's recalibration) when given.
    This is the Monte Carlo error of one score at S samples."""
    draws = np.vstack([np.asarray(probability, float)[None, :],
                       np.asarray(replicates, float)])
    if transform is not None:
        draws = np.asarray(transform(draws), float)
    if draws.shape[0] < 2 or draws.shape[1] == 0:
        return np.full(draws.shape[1], np.nan)
    return draws.std(axis=0, ddof=1)


def monte_carlo_summary(sd: np.ndarray) -> dict[str, float]:
    """mean, 95th percentile and maximum over patients of their Monte Carlo sd (NaN when
    there is none)."""
    sd = np.asarray(sd, float)
    if not sd.size or np.isnan(sd).all():
        return {"sd_mean": float("nan"), "sd_p95": float("nan"), "sd_max": float("nan")}
    return {"sd_mean": float(np.nanmean(sd)), "sd_p95": float(np.nanpercentile(sd, 95)),
            "sd_max": float(np.nanmax(sd))}
