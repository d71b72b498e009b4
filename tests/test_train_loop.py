"""Training loop: memorises 8 patients, seeded runs repeat, test labels never steer it."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmfusion.errors import ConfigError
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.train.augment import AugmentSettings
from mmfusion.train.dataset import SplitData
from mmfusion.train.loop import TrainConfig, WeightAverage, fit_fold, predict_split
from mmfusion.train.metrics import youden_threshold

TINY = dict(depth=10, base_width=4, mmrl_dim=8, mmrl_heads=2, hga_dim=16, hga_out=16,
            head_hidden=32, diffusion_hidden=16, n_samples=4, timesteps=10, dropout=0.0)
NO_AUG = AugmentSettings(flip=0, noise=0, bias_field=0, motion=0)


def split(n: int, seed: int, labels: np.ndarray | None = None) -> SplitData:
    rng = np.random.default_rng(seed)
    y = labels if labels is not None else np.array([0, 1] * (n // 2))
    patches = {"tumour": rng.normal(size=(n, 8, 16, 16)).astype(np.float32),
               "node1": rng.normal(size=(n, 8, 12, 12)).astype(np.float32),
               "node2": rng.normal(size=(n, 6, 10, 10)).astype(np.float32),
               "node3": np.zeros((n, 4, 8, 8), np.float32)}
    present = np.zeros((n, 3), np.uint8)
    present[:, 0] = 1
    present[::2, 1] = 1
    tables = {"clinical": rng.normal(size=(n, 4)).astype(np.float32),
              "hematology": rng.normal(size=(n, 3)).astype(np.float32),
              "radiomics_tumour": rng.normal(size=(n, 5)).astype(np.float32),
              "radiomics_node": rng.normal(size=(n, 2)).astype(np.float32)}
    return SplitData([f"p{seed}_{i}" for i in range(n)], patches, present, tables,
                     y.astype(np.int64), np.arange(n))


def splits(test_labels: np.ndarray | None = None) -> dict[str, SplitData]:
    return {"train": split(8, 0), "val": split(6, 1), "test": split(6, 2, test_labels)}


def config(**kw) -> TrainConfig:
    base = dict(epochs=30, batch_size=4, lr=3e-3, weight_decay=0.0, min_lr=1e-3,
                restart_epoch=30, warmup_epochs=15, seed=7, device="cpu", augment=NO_AUG,
                progress=False)
    return TrainConfig(**{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")


def test_base3_memorises_eight_patients(tmp_path):
    cfg = ModelConfig(variant="base3", **TINY)
    data = splits()
    fit_fold(cfg, config(epochs=20), data, tmp_path / "run")
    model = MMFusionModel(cfg, {g: a.shape[1] for g, a in data["train"].tables.items()})
    model.load_state_dict(torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"])
    p, _ = predict_split(model, data["train"], 8, torch.device("cpu"), seed=0)
    assert ((p > 0.5) == data["train"].labels).all(), p


def test_mmfusion_phases_outputs_and_checkpoint_choice(tmp_path):
    cfg = ModelConfig(variant="mmfusion", probability="difference", **TINY)
    metrics = fit_fold(cfg, config(epochs=6, warmup_epochs=3, select_from=4,
                                   diffusion_updates=2, diffusion_lr=1e-3),
                       splits(), tmp_path / "run")
    chosen = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert chosen["epoch"] == metrics["best_epoch"] >= 4  # joint phase, >= select_from
    assert metrics["temperature"] == pytest.approx(float(chosen["model"]["cfd.temperature"]))
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert list(pred.columns) == ["patient_id", "fold", "variant", "probability",
                                  "uncertainty", "label", "probability_raw"]
    assert len(pred) == 6 and (pred["variant"] == "mmfusion").all()
    assert (pred["uncertainty"] >= 0).all()
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log["phase"]) == ["warmup"] * 3 + ["joint"] * 3
    assert log["train_diffusion"].isna().sum() == 3
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    saved = json.loads(text)
    assert {"auc", "accuracy", "precision", "recall", "f1", "brier"} <= set(saved["test"])
    with pytest.raises(ConfigError, match=r"warmup_epochs \(3\) leaves no joint epoch of 3"):
        fit_fold(cfg, config(epochs=3, warmup_epochs=3), splits(), tmp_path / "bad")


def test_seeded_runs_identical_and_test_labels_do_not_steer(tmp_path):
    cfg = ModelConfig(variant="base3", **TINY)
    a = fit_fold(cfg, config(epochs=4, augment=AugmentSettings()), splits(), tmp_path / "a")
    b = fit_fold(cfg, config(epochs=4, augment=AugmentSettings()), splits(), tmp_path / "b")
    flipped = 1 - splits()["test"].labels
    c = fit_fold(cfg, config(epochs=4, augment=AugmentSettings()), splits(flipped),
                 tmp_path / "c")
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert pd.read_csv(tmp_path / "a" / "train_log.csv").drop(columns=[
        "epoch_seconds", "data_wait_share"]).equals(pd.read_csv(
            tmp_path / "b" / "train_log.csv").drop(columns=["epoch_seconds",
                                                             "data_wait_share"]))
    assert c["best_epoch"] == a["best_epoch"] and c["val"] == a["val"]
    pa = pd.read_csv(tmp_path / "a" / "predictions.csv")
    pc = pd.read_csv(tmp_path / "c" / "predictions.csv")
    assert pa["probability"].equals(pc["probability"])


@pytest.mark.parametrize("ema_decay", [0.0, 0.8])
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, ema_decay):
    cfg = ModelConfig(variant="base2", **TINY)
    full = fit_fold(cfg, config(epochs=4, ema_decay=ema_decay), splits(), tmp_path / "full")
    fit_fold(cfg, config(epochs=2, ema_decay=ema_decay), splits(), tmp_path / "part")
    # an interrupted run: same settings but stopped after epoch 1 -> rewrite its settings
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    state["settings"]["train"] = dataclasses.asdict(config(epochs=4, ema_decay=ema_decay))
    torch.save(state, tmp_path / "part" / "last.pt")
    resumed = fit_fold(cfg, config(epochs=4, ema_decay=ema_decay), splits(), tmp_path / "part")
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]


def test_weight_average_update_rule():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(model, 0.75)
    before = {k: v.clone() for k, v in avg.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(5, 3))  # BatchNorm running stats and batch counter move
    avg.update(model)
    now = model.state_dict()
    for name, value in avg.model.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * now[name])
        else:
            assert torch.equal(value, now[name]), name
    assert not any(p.requires_grad for p in avg.model.parameters())
    with pytest.raises(ConfigError, match=r"ema_decay must be in \(0, 1\) or 0 \(off\), not 1.0"):
        WeightAverage(model, 1.0)


def test_averaged_weights_are_validated_saved_and_scored(tmp_path):
    cfg = ModelConfig(variant="base2", **TINY)
    data = splits()
    metrics = fit_fold(cfg, config(epochs=3, select_from=2, ema_decay=0.5), data,
                       tmp_path / "run")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    chosen = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert metrics["best_epoch"] == 2  # the only eligible epoch: the last one
    assert chosen["model"].keys() == last["ema"].keys()
    for name, value in chosen["model"].items():
        assert torch.equal(value, last["ema"][name]), name  # the averaged weights ...
    raw = [n for n, v in last["model"].items()
           if v.dtype.is_floating_point and not torch.equal(v, last["ema"][n])]
    assert raw  # ... which differ from the raw ones
    model = MMFusionModel(cfg, {g: a.shape[1] for g, a in data["train"].tables.items()})
    model.load_state_dict(chosen["model"])
    p, _ = predict_split(model, data["test"], 4, torch.device("cpu"), seed=7)
    scored = pd.read_csv(tmp_path / "run" / "predictions.csv")["probability_raw"].to_numpy()
    np.testing.assert_allclose(scored, p, atol=1e-6)  # the model's own, before recalibration


def test_mmfusion_test_labels_do_not_steer_weights_temperature_or_threshold(tmp_path):
    """mmfusion (guide warm-up, joint diffusion, validation-fitted temperature of the
    `difference` mapping and recalibration, Youden threshold): permuting the test fold's
    labels leaves every weight, the temperature, the recalibration, the threshold, the
    training log and the validation outputs bit-identical; only the test metrics change."""
    cfg = ModelConfig(variant="mmfusion", probability="difference", **TINY)
    train = config(epochs=3, warmup_epochs=1, select_from=1, diffusion_updates=1,
                   augment=AugmentSettings())
    a = fit_fold(cfg, train, splits(), tmp_path / "a")
    # a permutation that matters: one for which a threshold pooled over validation and
    # test (a leak) would move; test scores do not depend on test labels, so run a's serve
    labels = splits()["test"].labels
    val_a = pd.read_csv(tmp_path / "a" / "val_predictions.csv")
    test_p = pd.read_csv(tmp_path / "a" / "predictions.csv")["probability"].to_numpy()

    def pooled(y: np.ndarray) -> float:
        return youden_threshold(np.r_[val_a["label"], y], np.r_[val_a["probability"], test_p])

    permuted = next(np.array(c) for c in sorted(set(itertools.permutations(labels)))
                    if pooled(np.array(c)) != pooled(labels))
    assert sorted(permuted) == sorted(labels) and not (permuted == labels).all()
    b = fit_fold(cfg, train, splits(permuted), tmp_path / "b")
    for name in ("model.pt", "last.pt"):
        sa = torch.load(tmp_path / "a" / name, weights_only=False)["model"]
        sb = torch.load(tmp_path / "b" / name, weights_only=False)["model"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert a["temperature"] is not None and a["temperature"] == b["temperature"]
    # the validation-fitted recalibration (train.recalibration, default platt) too
    assert a["recalibration"]["fitted"] and a["recalibration"] == b["recalibration"]
    assert (tmp_path / "a" / "scoring.json").read_bytes() == \
        (tmp_path / "b" / "scoring.json").read_bytes()
    assert a["threshold"] == b["threshold"] and a["best_epoch"] == b["best_epoch"]
    assert a["val"] == b["val"]
    timing = ["epoch_seconds", "data_wait_share"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a" / "train_log.csv").drop(columns=timing),
        pd.read_csv(tmp_path / "b" / "train_log.csv").drop(columns=timing))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "val_predictions.csv"),
                                  pd.read_csv(tmp_path / "b" / "val_predictions.csv"))
    pa = pd.read_csv(tmp_path / "a" / "predictions.csv")
    pb = pd.read_csv(tmp_path / "b" / "predictions.csv")
    pd.testing.assert_frame_equal(pa.drop(columns="label"), pb.drop(columns="label"))
    assert pb["label"].tolist() == permuted.tolist()
    assert a["test"] != b["test"]  # the labels did reach the test metrics
