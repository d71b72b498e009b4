"""`mmfusion train cache|fold` on tiny cohort files: deep variant and baseline outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from mmfusion.cli import main
from tests.train_fixtures import write_random_patches, write_tables


def write_cohort(root, n: int = 18):
    ids, rng = write_tables(root, n, n_train=10)  # 10 train, 4 val, 4 test
    write_random_patches(root, ids, rng)
    return ids


def test_cache_then_fold_deep_and_baseline(tmp_path):
    torch.set_num_threads(2)
    ids = write_cohort(tmp_path)
    assert main(["train", "cache", "--table", str(tmp_path / "table.tsv"),
                 "--patients-dir", str(tmp_path / "patients"),
                 "--out", str(tmp_path / "cache")]) == 0
    assert json.loads((tmp_path / "cache" / "patients.json").read_text()) == ids
    assert np.load(tmp_path / "cache" / "tumour.npy", mmap_mode="r").shape == (18, 8, 16, 16)
    common = ["--table", str(tmp_path / "table.tsv"), "--spec", str(tmp_path / "spec.json"),
              "--folds", str(tmp_path / "folds.tsv"), "--fold", "0",
              "--preprocess-settings", json.dumps({"n_tumour": 2, "n_node": 1})]
    model = {"depth": 10, "base_width": 4, "mmrl_dim": 8, "mmrl_heads": 2, "hga_dim": 8,
             "hga_out": 8, "head_hidden": 16, "diffusion_hidden": 8, "n_samples": 3}
    train = {"epochs": 3, "warmup_epochs": 1, "batch_size": 4, "device": "cpu",
             "progress": False}
    out = tmp_path / "models" / "mmfusion" / "fold0"
    assert main(["train", "fold", *common, "--cache", str(tmp_path / "cache"),
                 "--variant", "mmfusion", "--model-settings", json.dumps(model),
                 "--train-settings", json.dumps(train), "--out", str(out),
                 "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1  # the workflow's per-job thread count is applied
    pred = pd.read_csv(out / "predictions.csv")
    assert pred["patient_id"].tolist() == ids[14:]
    assert json.loads((out / "metrics.json").read_text())["settings"]["tabular_widths"] == {
        "clinical": 3, "hematology": 1, "radiomics_tumour": 2, "radiomics_node": 2}
    base = tmp_path / "models" / "logreg" / "fold0"
    assert main(["train", "fold", *common, "--variant", "logreg", "--out", str(base)]) == 0
    assert pd.read_csv(base / "predictions.csv")["patient_id"].tolist() == ids[14:]
