"""Paper Fig. 3: the CFD reverse trajectory of each fold's test patients (computed by
mmfusion/train/trajectory.py), t-SNE per step and the Davies–Bouldin score per step
(mmfusion/report/trajectory.py, `mmfusion trajectory`), on two tiny trained mmfusion folds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from mmfusion.cli import main
from mmfusion.errors import ConfigError
from mmfusion.report.trajectory import (
    TABLE,
    FoldTrajectory,
    analyse,
    davies_bouldin,
    select_steps,
    tsne_embedding,
    tsne_perplexity,
)
from mmfusion.train.trajectory import fold_trajectory
from tests.train_fixtures import write_random_patches, write_tables

N, N_FOLDS, TIMESTEPS = 24, 2, 10
STEPS = [10, 8, 6, 4, 2, 0]  # the default 6 steps of T = 10 (y_t: T..0)
HIDDEN_STEPS = [10, 8, 6, 5, 3, 1]  # ... of the hidden features (T..1)
PNG = b"\x89PNG\r\n\x1a\n"
MODEL = {"depth": 10, "base_width": 4, "mmrl_dim": 8, "mmrl_heads": 2, "hga_dim": 8,
         "hga_out": 8, "head_hidden": 16, "diffusion_hidden": 8, "n_samples": 3,
         "timesteps": TIMESTEPS}
# batch 3: each 8-patient test split is scored in 3 batches (the noise must not depend on them)
TRAIN = {"epochs": 3, "warmup_epochs": 1, "select_from": 1, "batch_size": 3,
         "device": "cpu", "progress": False}


def _write_folds(root: Path, ids: list[str]) -> None:
    """Two folds; each block of 4 consecutive (alternating-label) IDs is balanced."""
    rows = []
    for k, (test, val) in enumerate(((slice(16, 24), slice(12, 16)),
                                     (slice(0, 8), slice(8, 12)))):
        split = np.array(["train"] * len(ids), dtype=object)
        split[test], split[val] = "test", "val"
        rows += [{"patient_id": pid, "fold": k, "split": s}
                 for pid, s in zip(ids, split, strict=True)]
    pd.DataFrame(rows).to_csv(root / "folds.tsv", sep="\t", index=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patch cache and mmfusion trained on both folds (3 epochs, tiny widths)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fig3")
    ids, rng = write_tables(root, N, n_train=12)
    _write_folds(root, ids)
    write_random_patches(root, ids, rng)
    assert main(["train", "cache", "--table", str(root / "table.tsv"),
                 "--patients-dir", str(root / "patients"), "--out", str(root / "cache")]) == 0
    for fold in range(N_FOLDS):
        assert main(["train", "fold", "--table", str(root / "table.tsv"),
                     "--spec", str(root / "spec.json"), "--folds", str(root / "folds.tsv"),
                     "--fold", str(fold), "--cache", str(root / "cache"),
                     "--preprocess-settings", json.dumps({"n_tumour": 2, "n_node": 1}),
                     "--variant", "mmfusion", "--model-settings", json.dumps(MODEL),
                     "--train-settings", json.dumps(TRAIN),
                     "--out", str(root / "models" / "mmfusion" / f"fold{fold}")]) == 0
    torch.set_num_threads(threads)
    return root


def _cli(root: Path, out: Path, *extra: str) -> int:
    variants = [] if "--variants" in extra else ["--variants", "mmfusion"]
    return main(["trajectory", "--models-dir", str(root / "models"), *variants,
                 "--table", str(root / "table.tsv"), "--spec", str(root / "spec.json"),
                 "--folds", str(root / "folds.tsv"), "--cache", str(root / "cache"),
                 "--out", str(out), "--threads", "1", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def report(trained: Path) -> Path:
    out = trained / "report"
    assert _cli(trained, out) == 0
    return out


def test_csv_has_one_row_per_fold_and_step(report: Path) -> None:
    db = pd.read_csv(report / TABLE)
    assert list(db.columns) == ["variant", "fold", "step", "davies_bouldin",
                                "davies_bouldin_tsne", "n_patients", "n_positive",
                                "davies_bouldin_y_t"]
    assert len(db) == N_FOLDS * len(HIDDEN_STEPS)
    assert not db.duplicated(["variant", "fold", "step"]).any()
    for fold in range(N_FOLDS):
        assert db.loc[db["fold"] == fold, "step"].tolist() == HIDDEN_STEPS
    assert set(db["variant"]) == {"mmfusion"}
    assert (db["n_patients"] == 8).all() and (db["n_positive"] == 4).all()
    assert np.isfinite(db["davies_bouldin"]).all() and (db["davies_bouldin"] > 0).all()
    reps = pd.read_csv(report / "fig3" / "representations.csv")
    assert len(reps) == N_FOLDS * len(HIDDEN_STEPS) * 8
    assert reps[["y_t_0", "y_t_1", "tsne_1", "tsne_2"]].notna().all().all()
    info = json.loads((report / "fig3" / "info.json").read_text())
    assert [f["steps"] for f in info["folds"]] == [HIDDEN_STEPS] * N_FOLDS
    assert {f["embedded"] for f in info["folds"]} == {"hidden features"}
    assert "hidden layer" in info["representation"]


def test_figures_are_valid_pngs(report: Path) -> None:
    names = ([f"mmfusion_fold{k}.png" for k in range(N_FOLDS)]
             + [f"mmfusion_fold{k}_y_t.png" for k in range(N_FOLDS)]
             + ["mmfusion_davies_bouldin.png"])
    for name in names:
        path = report / "fig3" / name
        assert path.read_bytes()[:8] == PNG, name
        assert path.stat().st_size > 5000, name
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300, (name, image.shape)
        assert image.std() > 0.01, name  # not a blank canvas


def test_two_runs_give_identical_outputs(trained: Path, report: Path, tmp_path: Path) -> None:
    assert _cli(trained, tmp_path) == 0
    assert (tmp_path / TABLE).read_bytes() == (report / TABLE).read_bytes()
    again = (tmp_path / "fig3" / "representations.csv").read_bytes()
    assert again == (report / "fig3" / "representations.csv").read_bytes()


def test_the_last_step_is_the_sample_that_scored_the_patient(trained: Path) -> None:
    for fold in range(N_FOLDS):
        traj = fold_trajectory(trained / "models", "mmfusion", fold, trained / "table.tsv",
                               trained / "spec.json", trained / "folds.tsv",
                               trained / "cache", torch.device("cpu"))
        assert traj.states.shape == (TIMESTEPS + 1, 8, 2)
        # the noise network's hidden features (diffusion_hidden = 8) at steps T..1
        assert traj.hidden is not None and traj.hidden.shape == (TIMESTEPS, 8, 8)
        assert np.isfinite(traj.hidden).all()
        assert np.ptp(traj.hidden, axis=1).max() > 0  # patients differ
        assert not np.allclose(traj.hidden[0], traj.hidden[-1])  # and so do the steps
        pred = pd.read_csv(trained / "models" / "mmfusion" / f"fold{fold}" / "predictions.csv")
        assert traj.patient_ids == pred["patient_id"].tolist()
        np.testing.assert_array_equal(traj.labels, pred["label"].to_numpy())
        np.testing.assert_allclose(traj.probability, pred["probability_raw"], atol=1e-6)


def test_steps_option_and_bad_inputs(trained: Path, tmp_path: Path) -> None:
    assert _cli(trained, tmp_path, "--steps", "20") == 0  # more than T + 1: every step
    db = pd.read_csv(tmp_path / TABLE)
    assert db.loc[db["fold"] == 0, "step"].tolist() == list(range(TIMESTEPS, 0, -1))
    assert _cli(trained, tmp_path, "--steps", "1") == 1  # ConfigError: one clear line
    assert _cli(trained, tmp_path, "--variants", "mmfusion_gcn") == 1  # not trained


def test_select_steps() -> None:
    assert select_steps(10, 6) == STEPS
    assert select_steps(3, 6) == [3, 2, 1, 0]
    assert select_steps(10, 2) == [10, 0]
    with pytest.raises(ConfigError):
        select_steps(10, 1)


def test_davies_bouldin_is_lower_for_separated_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    noise = rng.normal(size=(100, 2))
    separated = noise + 10.0 * labels[:, None]
    overlapping = noise + 0.2 * labels[:, None]
    assert davies_bouldin(separated, labels) < 0.5 < davies_bouldin(overlapping, labels)
    assert math.isnan(davies_bouldin(separated, np.zeros(100, int)))  # one class absent
    assert math.isnan(davies_bouldin(separated[:2], labels[[0, 99]]))  # n = classes


def test_absent_class_gives_nan_rows_and_tsne_guards() -> None:
    rng = np.random.default_rng(1)
    states = rng.normal(size=(TIMESTEPS + 1, 6, 2))
    traj = FoldTrajectory("mmfusion", 0, [f"P{i}" for i in range(6)], np.zeros(6, int),
                          states, np.zeros(6), seed=0, n_samples=3)
    rows, table = analyse(traj, STEPS)
    assert [r["step"] for r in rows] == STEPS
    assert all(math.isnan(r["davies_bouldin"]) and math.isnan(r["davies_bouldin_tsne"])
               for r in rows)
    assert table["tsne_1"].notna().all()  # 6 patients: t-SNE runs
    assert tsne_embedding(states[0, :3]) is None  # 3 patients: too few
    assert tsne_perplexity(4) < 4 and tsne_perplexity(1000) == 30
    a, b = tsne_embedding(states[0]), tsne_embedding(states[0])
    np.testing.assert_array_equal(a, b)  # fixed random_state


def _two_classes(rng: np.random.Generator, shift: float, n: int = 40, dim: int = 16
                 ) -> np.ndarray:
    labels = np.repeat([0, 1], n // 2)
    return rng.normal(size=(n, dim)) + shift * labels[:, None] * np.ones(dim) / np.sqrt(dim)


def test_fig3_scores_the_hidden_features_it_embeds() -> None:
    """Davies-Bouldin is computed on the representation t-SNE embeds (the hidden features),
    not on y_t: classes separated in the hidden features and mixed in y_t score low, and
    well-separated high-dimensional features score lower than overlapping ones."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 20)
    separated = np.stack([_two_classes(rng, 24.0) for _ in range(TIMESTEPS)])
    overlapping = np.stack([_two_classes(rng, 0.3) for _ in range(TIMESTEPS)])
    states = rng.normal(size=(TIMESTEPS + 1, 40, 2))  # y_t: no class structure
    ids = [f"P{i}" for i in range(40)]
    rows_sep, table = analyse(FoldTrajectory("mmfusion", 0, ids, labels, states, np.zeros(40),
                                             0, 3, hidden=separated), HIDDEN_STEPS)
    rows_ovl, _ = analyse(FoldTrajectory("mmfusion", 0, ids, labels, states, np.zeros(40),
                                         0, 3, hidden=overlapping), HIDDEN_STEPS)
    for sep, ovl in zip(rows_sep, rows_ovl, strict=True):
        assert sep["davies_bouldin"] < 0.6 < 2.0 < ovl["davies_bouldin"]
        assert sep["davies_bouldin_y_t"] > 2.0  # the 2-D y_t has no structure here
    assert table["y_t_0"].notna().all()


def test_hidden_features_are_the_mean_over_samples_per_patient_and_step() -> None:
    from mmfusion.train.trajectory import _hidden_steps

    rng = np.random.default_rng(3)
    n, s, h, t, batch = 7, 3, 4, 5, 3
    full = rng.normal(size=(t, n, s, h)).astype(np.float32)  # step, patient, sample, feature
    captured = [torch.from_numpy(full[i, start:start + batch].reshape(-1, h))
                for start in range(0, n, batch) for i in range(t)]
    out = _hidden_steps(captured, n, batch, s, t)
    np.testing.assert_allclose(out, full.mean(axis=2), rtol=1e-6)
    with pytest.raises(RuntimeError, match="noise-network calls"):
        _hidden_steps(captured[:-1], n, batch, s, t)
