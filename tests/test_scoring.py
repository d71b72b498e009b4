"""One patient, one score: the one scoring function (mmfusion/train/scoring.py) gives a
patient the same probability alone, in any batch size, in any order and beside any other
patients; the noise depends on the seed only; the Monte Carlo error is measured honestly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.train.dataset import SplitData
from mmfusion.train.loop import predict_split
from mmfusion.train.scoring import (
    monte_carlo_sd,
    monte_carlo_summary,
    replicate_seeds,
    score_split,
)
from tests.test_train_loop import TINY, split

pytestmark = pytest.mark.usefixtures("one_thread")

N = 30  # patients: 8 batches of 4, and far more than one batch of the training default
CPU = torch.device("cpu")
TABLE_WIDTHS = {"clinical": 4, "hematology": 3, "radiomics_tumour": 5, "radiomics_node": 2}


def _model(variant: str, n_samples: int = 16, seed: int = 0) -> MMFusionModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(variant=variant, probability="difference",
                      **{**TINY, "n_samples": n_samples})
    model = MMFusionModel(cfg, TABLE_WIDTHS).eval()
    with torch.no_grad():  # BatchNorm statistics of a trained model, not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _subset(data: SplitData, rows: np.ndarray) -> SplitData:
    """The patients `rows` of `data`, in that order (the cache rows follow them)."""
    return dataclasses.replace(data, patient_ids=[data.patient_ids[i] for i in rows],
                               tables={g: a[rows] for g, a in data.tables.items()},
                               labels=data.labels[rows], cache_rows=data.cache_rows[rows])


@pytest.fixture(scope="module")
def data() -> SplitData:
    return split(N, seed=5)


@pytest.mark.parametrize("variant", ["mmfusion", "base3"])
def test_a_patients_score_depends_on_nothing_but_the_patient(data: SplitData,
                                                             variant: str) -> None:
    """Batch 4 (8 batches, as training scores), alone (batch 1), all at once (batch 200),
    in reverse order, and beside other patients: the same probability, uncertainty and
    samples: the same probability and uncertainty to 1e-6 (each sample's to 1e-5: the
    backbones' float32 rounding differs with the batch size and the diffusion head
    magnifies it, the mean over samples averages it out). The training entry point
    (`predict_split`) agrees."""
    model = _model(variant)
    ref = score_split(model, data, 4, CPU, seed=3)
    assert ref.probability.shape == (N,)
    for batch_size in (1, 7, 200):
        other = score_split(model, data, batch_size, CPU, seed=3)
        for field, atol in (("probability", 1e-6), ("uncertainty", 1e-6),
                            ("sample_probability", 1e-5)):
            np.testing.assert_allclose(getattr(other, field), getattr(ref, field), rtol=0,
                                       atol=atol, err_msg=f"{field}, batch {batch_size}")
    order = np.arange(N)[::-1].copy()
    rev = score_split(model, _subset(data, order), 4, CPU, seed=3)
    np.testing.assert_allclose(rev.probability, ref.probability[order], rtol=0, atol=1e-6)
    # the last 6 patients beside 24 others, then beside nobody
    alone = score_split(model, _subset(data, np.arange(24, N)), 4, CPU, seed=3)
    np.testing.assert_allclose(alone.probability, ref.probability[24:], rtol=0, atol=1e-6)
    p, u = predict_split(model, data, 12, CPU, seed=3)
    np.testing.assert_allclose(p, ref.probability, rtol=0, atol=1e-6)
    np.testing.assert_allclose(u, ref.uncertainty, rtol=0, atol=1e-6)
    if variant == "base3":
        assert (ref.uncertainty == 0).all() and ref.sample_probability.shape == (N, 1)


def test_the_noise_is_the_seeds_and_common_to_all_patients(data: SplitData) -> None:
    model = _model("mmfusion")
    a = score_split(model, data, 4, CPU, seed=3)
    b = score_split(model, data, 4, CPU, seed=4)
    assert np.abs(a.probability - b.probability).max() > 1e-4  # another draw
    assert a.samples is not None and a.samples.shape == (N, 16, 2)
    # antithetic pairs: sample j and j + S/2 share |draws|, so with the same features and
    # ŷ two patients' samples differ only through the model
    noise = model.cfd.draw_noise(16, torch.Generator().manual_seed(3))
    torch.testing.assert_close(noise[:, 8:], -noise[:, :8])
    again = model.cfd.draw_noise(16, torch.Generator().manual_seed(3))
    torch.testing.assert_close(noise, again)


def test_trajectory_ends_in_the_scored_samples(data: SplitData) -> None:
    model = _model("mmfusion", n_samples=6)
    scores = score_split(model, data, 4, CPU, seed=1, trajectory=True, replicates=3)
    assert scores.trajectory is not None
    assert scores.trajectory.shape == (model.cfd.timesteps + 1, N, 2)
    np.testing.assert_allclose(scores.trajectory[-1], scores.samples.mean(axis=1), rtol=1e-5,
                               atol=1e-6)
    plain = score_split(model, data, 9, CPU, seed=1)  # the extras change nothing scored
    np.testing.assert_allclose(plain.probability, scores.probability, rtol=0, atol=1e-6)
    assert scores.replicates.shape == (3, N)


def test_replicates_are_independent_draws(data: SplitData) -> None:
    """The replicate draws are other seeds' draws (each reproducible on its own), and the
    measured Monte Carlo sd falls with the number of samples about as 1/sqrt(S)."""
    seeds = replicate_seeds(3, 4)
    assert len(set(seeds)) == 4 and 3 not in seeds and seeds == replicate_seeds(3, 4)
    sds = {}
    for s in (4, 64):
        model = _model("mmfusion", n_samples=s)
        scores = score_split(model, data, 8, CPU, seed=3, replicates=6)
        first = score_split(model, data, 8, CPU, seed=seeds[0])
        np.testing.assert_allclose(scores.replicates[0], first.probability, rtol=0,
                                   atol=1e-6)
        sd = monte_carlo_sd(scores.probability, scores.replicates)
        assert sd.shape == (N,) and (sd > 0).all()
        sds[s] = float(np.mean(sd))
    assert sds[64] < 0.5 * sds[4]  # 1/sqrt(16) = 0.25 expected


def test_monte_carlo_sd_and_summary_by_hand() -> None:
    p = np.array([0.2, 0.5])
    reps = np.array([[0.4, 0.5], [0.3, 0.5]])
    sd = monte_carlo_sd(p, reps)
    np.testing.assert_allclose(sd, [np.std([0.2, 0.4, 0.3], ddof=1), 0.0])
    doubled = monte_carlo_sd(p, reps, transform=lambda x: 2 * x)
    np.testing.assert_allclose(doubled, 2 * sd)
    summary = monte_carlo_summary(sd)
    assert summary["sd_max"] == pytest.approx(sd[0])
    assert summary["sd_mean"] == pytest.approx(sd.mean())
    assert np.isnan(monte_carlo_sd(p, np.zeros((0, 2)))).all()
    assert np.isnan(monte_carlo_summary(np.zeros(0))["sd_mean"])
