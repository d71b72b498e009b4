"""Frozen-backbone mode: feature cache, training on cached maps, its checks and the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmfusion.cli import main
from mmfusion.errors import ConfigError, MMFusionError
from mmfusion.model.backbone import ResNet3D
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.train.augment import AugmentSettings
from mmfusion.train.dataset import PATCH_KINDS, build_patch_cache, open_patch_cache
from mmfusion.train.features import (
    FMAP_KEYS,
    build_feature_cache,
    check_feature_cache,
    open_feature_cache,
)
from mmfusion.train.fold import load_fold
from mmfusion.train.loop import TrainConfig, fit_fold, predict_split
from tests.train_fixtures import write_tables

TINY = dict(depth=10, base_width=4, mmrl_dim=8, mmrl_heads=2, hga_dim=8, hga_out=8,
            head_hidden=16, diffusion_hidden=8, n_samples=3, dropout=0.0,
            shared_backbone=False)
SIZES = {"tumour": (8, 16, 16), "node1": (8, 12, 12), "node2": (6, 10, 10),
         "node3": (4, 8, 8)}
N = 16
PRESET = {"n_tumour": 2, "n_node": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_cohort(root: Path) -> list[str]:
    """Cohort files (table, spec, folds: 8 train, 4 val, 4 test) and per-patient patches."""
    ids, rng = write_tables(root, N, n_train=8)
    for i, pid in enumerate(ids):
        d = root / "patients" / pid
        d.mkdir(parents=True)
        present = np.array([1, i % 2, 0], np.uint8)
        patches = {k: (rng.normal(size=s).astype(np.float32) if k == "tumour" or present[
            int(k[-1]) - 1] else np.zeros(s, np.float32)) for k, s in SIZES.items()}
        np.savez_compressed(d / "patches.npz", **patches, node_present=present, meta="{}")
    return ids


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    ids = write_cohort(tmp_path)
    build_patch_cache(ids, [tmp_path / "patients" / p / "patches.npz" for p in ids],
                      tmp_path / "cache")
    return tmp_path


def fake_medicalnet(path: Path, depth: int = 10, width: int = 4, seed: int = 123) -> Path:
    """A MedicalNet-style checkpoint (`state_dict`, `module.` prefix) for a small ResNet."""
    torch.manual_seed(seed)
    net = ResNet3D(depth, width)
    with torch.no_grad():  # non-trivial BN statistics, as a trained network has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def train_config(**kw) -> TrainConfig:
    base = dict(epochs=4, warmup_epochs=2, batch_size=4, lr=3e-3, weight_decay=0.0,
                min_lr=1e-3, restart_epoch=4, seed=5, device="cpu", progress=False,
                augment=AugmentSettings())  # augmentation on: frozen mode must skip it
    return TrainConfig(**{**base, **kw})


def test_feature_cache_layout_matches_encode_images_and_warns(cohort: Path, caplog):
    cfg = ModelConfig(variant="mmfusion", freeze_backbone=True, **TINY)
    with caplog.at_level(logging.WARNING, logger="mmfusion.train.features"):
        out = build_feature_cache(cohort / "cache", cfg, 3, cohort / "features",
                                  batch_size=5, progress=False)
    assert "random" in caplog.text  # no pretrained weights: random features, a warning
    names = {p.name for p in out.iterdir()}
    assert names == {*(f"{k}.npy" for k in FMAP_KEYS), "node_present.npy", "patients.json",
                     "backbone.pt", "settings.json"}
    ids, maps = open_feature_cache(out)
    _, patches = open_patch_cache(cohort / "cache")
    assert ids == json.loads((cohort / "cache" / "patients.json").read_text())
    assert isinstance(maps["tumour_fmap"], np.memmap) and maps["tumour_fmap"].shape[0] == N
    assert np.array_equal(maps["node_present"], patches["node_present"])
    # absent nodes: all-zero maps; present ones are not
    absent = patches["node_present"][:, 1] == 0
    assert not maps["node2_fmap"][absent].any() and maps["node2_fmap"][~absent].any()
    assert not maps["node3_fmap"].any()
    # the maps are the model's own encode_images on the raw patches (eval mode)
    model = MMFusionModel(dataclasses.replace(cfg, variant="base1"), {})
    model.backbones.load_state_dict(torch.load(out / "backbone.pt", weights_only=True))
    model.eval()
    batch = {k: torch.from_numpy(np.array(patches[k])).unsqueeze(1) for k in PATCH_KINDS}
    batch["node_present"] = torch.from_numpy(np.array(patches["node_present"]))
    with torch.no_grad():
        ref = model.encode_images(batch)
    for key in FMAP_KEYS:
        np.testing.assert_allclose(maps[key], ref[key].numpy(), atol=1e-5, rtol=0)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"]["init_seed"] == 3 and settings["model"]["base_width"] == 4


def test_feature_cache_reused_when_settings_match_rebuilt_when_not(cohort: Path, caplog):
    weights = fake_medicalnet(cohort / "resnet_10_23dataset.pth")
    cfg = ModelConfig(freeze_backbone=True, pretrained=str(weights), **TINY)
    with caplog.at_level(logging.WARNING, logger="mmfusion.train.features"):
        out = build_feature_cache(cohort / "cache", cfg, 0, cohort / "f", progress=False)
    assert "random" not in caplog.text
    stored = json.loads((out / "settings.json").read_text())["model"]
    assert stored["init_seed"] is None and len(stored["pretrained_sha256"]) == 64

    def stamp() -> tuple[int, int]:
        st = (out / "tumour_fmap.npy").stat()
        return st.st_ino, st.st_mtime_ns

    first = stamp()
    before = np.array(np.load(out / "tumour_fmap.npy"))
    # same settings (the seed does not matter with pretrained weights; neither does the
    # variant): reused as it is
    build_feature_cache(cohort / "cache", dataclasses.replace(cfg, variant="base2"), 9,
                        cohort / "f", progress=False)
    assert stamp() == first
    # other weights (same path): rebuilt, other maps
    fake_medicalnet(weights, seed=321)
    build_feature_cache(cohort / "cache", cfg, 0, cohort / "f", progress=False)
    assert stamp() != first
    assert not np.array_equal(np.load(out / "tumour_fmap.npy"), before)
    # other backbone settings: rebuilt with their shapes
    second = stamp()
    other = ModelConfig(freeze_backbone=True, **{**TINY, "base_width": 2})
    build_feature_cache(cohort / "cache", other, 0, cohort / "f", progress=False)
    assert stamp() != second
    assert np.load(out / "tumour_fmap.npy", mmap_mode="r").shape[1] == 2 * 8  # C = 8 x width
    # a rebuilt patch cache: the maps are rebuilt too
    third = stamp()
    ids = json.loads((cohort / "cache" / "patients.json").read_text())
    shutil.rmtree(cohort / "cache")
    build_patch_cache(ids, [cohort / "patients" / p / "patches.npz" for p in ids],
                      cohort / "cache")
    build_feature_cache(cohort / "cache", other, 0, cohort / "f", progress=False)
    assert stamp() != third
    assert not list(cohort.glob(".f.*"))  # no temporary folder left behind


def test_frozen_training_keeps_backbone_and_predicts_like_raw_patches(cohort: Path):
    weights = fake_medicalnet(cohort / "resnet_10_23dataset.pth")
    cfg = ModelConfig(variant="mmfusion", freeze_backbone=True, pretrained=str(weights),
                      probability="difference", **TINY)
    tcfg = train_config()
    features = build_feature_cache(cohort / "cache", cfg, tcfg.seed, cohort / "features",
                                   progress=False)
    files = (cohort / "table.tsv", cohort / "spec.json", cohort / "folds.tsv")
    splits = load_fold(*files, None, 0, PRESET, features=features)
    assert "tumour_fmap" in splits["train"].batch(np.arange(2), torch.device("cpu"))
    metrics = fit_fold(cfg, tcfg, splits, cohort / "run", features=features)
    assert metrics["settings"]["features"]["model"]["pretrained_sha256"]
    chosen = torch.load(cohort / "run" / "model.pt", weights_only=True)
    assert chosen["settings"]["features"]["path"] == str(features.resolve())

    # the backbone is bit-identical to the cache's, and is part of model.pt
    cached = torch.load(features / "backbone.pt", weights_only=True)
    saved = {k.removeprefix("backbones."): v for k, v in chosen["model"].items()
             if k.startswith("backbones.")}
    assert saved.keys() == cached.keys() and len(saved) > 0
    assert all(torch.equal(saved[k], cached[k]) for k in cached)

    # everything else trained: compare with the initial model (same seed, same init order)
    widths = metrics["settings"]["tabular_widths"]
    torch.manual_seed(tcfg.seed)
    initial = MMFusionModel(cfg, widths).state_dict()
    changed = {k.split(".")[0] for k, v in chosen["model"].items()
               if not k.startswith("backbones.") and v.is_floating_point()
               and not torch.equal(v, initial[k])}
    assert {"mmrl", "hga", "head", "cfd"} <= changed
    # the optimiser held the trainable (non-backbone) parameters only
    last = torch.load(cohort / "run" / "last.pt", weights_only=True)
    model = MMFusionModel(cfg, widths)
    n_trainable = sum(1 for n, _ in model.named_parameters() if not n.startswith("backbones."))
    assert len(last["optimizer"]["param_groups"][0]["params"]) == n_trainable

    # model.pt predicts from raw patches exactly as from the cached maps
    model.load_state_dict(chosen["model"])
    raw = load_fold(*files, cohort / "cache", 0, PRESET)
    for split in ("val", "test"):
        p_maps, u_maps = predict_split(model, splits[split], 4, torch.device("cpu"), seed=1)
        p_raw, u_raw = predict_split(model, raw[split], 4, torch.device("cpu"), seed=1)
        np.testing.assert_allclose(p_maps, p_raw, atol=1e-5, rtol=0)
        np.testing.assert_allclose(u_maps, u_raw, atol=1e-5, rtol=0)
    written = pd.read_csv(cohort / "run" / "predictions.csv")["probability_raw"].to_numpy()
    np.testing.assert_allclose(written, predict_split(model, raw["test"], 4,
                                                      torch.device("cpu"), seed=tcfg.seed)[0],
                               atol=2e-6, rtol=0)


def test_frozen_mode_errors(cohort: Path):
    cfg = ModelConfig(variant="base2", freeze_backbone=True, **TINY)
    features = build_feature_cache(cohort / "cache", cfg, 0, cohort / "features",
                                   progress=False)
    files = (cohort / "table.tsv", cohort / "spec.json", cohort / "folds.tsv")
    maps = load_fold(*files, None, 0, PRESET, features=features)
    patches = load_fold(*files, cohort / "cache", 0, PRESET)
    tcfg = train_config(seed=0)
    with pytest.raises(ConfigError, match="--features"):  # frozen without a feature cache
        fit_fold(cfg, tcfg, maps, cohort / "a")
    with pytest.raises(ConfigError, match="base_width"):  # other backbone settings
        check_feature_cache(features, dataclasses.replace(cfg, base_width=2), 0)
    with pytest.raises(ConfigError, match="init_seed"):  # random backbone of another seed
        fit_fold(cfg, train_config(seed=1), maps, cohort / "b", features=features)
    with pytest.raises(ConfigError, match="freeze_backbone is false"):
        fit_fold(dataclasses.replace(cfg, freeze_backbone=False), tcfg, maps, cohort / "c",
                 features=features)
    with pytest.raises(ConfigError, match="serve image patches"):
        fit_fold(cfg, tcfg, patches, cohort / "d", features=features)
    with pytest.raises(MMFusionError, match="not a complete feature cache"):
        check_feature_cache(cohort / "cache", cfg, 0)


def test_cli_round_trip(cohort: Path, capsys):
    ids = json.loads((cohort / "cache" / "patients.json").read_text())
    model = {**TINY, "freeze_backbone": True}
    train = {"epochs": 3, "warmup_epochs": 1, "batch_size": 4, "device": "cpu",
             "progress": False, "seed": 2}
    assert main(["train", "features", "--cache", str(cohort / "cache"),
                 "--model-settings", json.dumps(model), "--train-settings", json.dumps(train),
                 "--out", str(cohort / "features")]) == 0
    common = ["train", "fold", "--table", str(cohort / "table.tsv"),
              "--spec", str(cohort / "spec.json"), "--folds", str(cohort / "folds.tsv"),
              "--fold", "0", "--variant", "mmfusion", "--cache", str(cohort / "cache"),
              "--preprocess-settings", json.dumps(PRESET),
              "--train-settings", json.dumps(train)]
    out = cohort / "models" / "mmfusion" / "fold0"
    assert main([*common, "--model-settings", json.dumps(model), "--features",
                 str(cohort / "features"), "--out", str(out)]) == 0
    assert pd.read_csv(out / "predictions.csv")["patient_id"].tolist() == ids[12:]
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["model"]["freeze_backbone"] and settings["features"]["model"]["init_seed"] == 2
    capsys.readouterr()
    # missing --features, and a feature cache of other settings: one clear error line each
    assert main([*common, "--model-settings", json.dumps(model), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--features" in err and "Potential fix" in err and "mmfusion train features" in err
    other = {**model, "base_width": 2}
    assert main([*common, "--model-settings", json.dumps(other), "--features",
                 str(cohort / "features"), "--out", str(out)]) == 1
    assert "base_width: cache 4 vs run 2" in capsys.readouterr().err
    # a patch cache rebuilt after the maps: stale feature cache
    shutil.rmtree(cohort / "cache")
    build_patch_cache(ids, [cohort / "patients" / p / "patches.npz" for p in ids],
                      cohort / "cache")
    assert main([*common, "--model-settings", json.dumps(model), "--features",
                 str(cohort / "features"), "--out", str(out)]) == 1
    assert "another (or an older) patch cache" in capsys.readouterr().err
