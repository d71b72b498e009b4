"""Paper Fig. 3's inference: the CFD reverse trajectories of every fold's test patients.

For each fold model of a diffusion variant (`mmfusion` and its Table 3 ablations), the
fold's **test** patients are scored by the one scoring function
(`mmfusion.train.scoring.score_split`, the fold's seed and batch size, `trajectory=True`),
so the last step of a patient's trajectory is the very sample set that scored it in the
fold's `predictions.csv`. Alongside the denoised label vectors y_t (2-D: one value per
class), the noise network's last hidden layer (the input of its output layer, width
`model.diffusion_hidden`) is captured at every reverse step, t = T..1: the features from
which eps_theta(y_t, f(x), ŷ, t) is predicted, a function of the patient's HGA features,
its guide prediction, its current y_t and t. Averaged over the patient's samples, this is
the high-dimensional "denoised multi-modal feature embedding" on which t-SNE and the
Davies–Bouldin score are meaningful (a t-SNE of 2-D y_t only distorts it). With repeated
CV only repeat 0's folds are drawn (every patient once), with several training seeds
each fold's seed 0 (`member`). Each fold's trajectory is written as
`{out}/fig3/trajectories/{variant}_fold{k}.npz` (`FoldTrajectory.save`); the report
(`mmfusion.report.trajectory`) reads those files and only analyses and plots them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmfusion.errors import ConfigError
from mmfusion.report.trajectory import FoldTrajectory, trajectory_file
from mmfusion.train.dataset import SplitData
from mmfusion.train.trained_fold import FoldModel, build_model, fold_tables, load_fold_model

log = logging.getLogger(__name__)


def load_test_split(fold_model: FoldModel, table_tsv: str | Path, spec_json: str | Path,
                    folds_tsv: str | Path, cache_dir: str | Path) -> SplitData:
    """The fold's test patients: tables through the fold's fitted preprocessor
    (preprocessor.json), patches memory-mapped from the patch cache."""
    from mmfusion.cohort.folds import read_folds
    from mmfusion.cohort.merge import read_cohort_table
    from mmfusion.cohort.preprocess import fold_frames
    from mmfusion.train.dataset import open_patch_cache, select_rows

    spec = json.loads(Path(spec_json).read_text())
    frame = fold_frames(read_cohort_table(table_tsv, spec), read_folds(folds_tsv),
                        fold_model.fold)["test"]
    ids = frame["patient_id"].astype(str).tolist()
    cache_ids, arrays = open_patch_cache(cache_dir)
    patches = {k: v for k, v in arrays.items() if k != "node_present"}
    return SplitData(ids, patches, arrays["node_present"], fold_tables(fold_model, frame),
                     frame["label"].to_numpy().astype(np.int64), select_rows(cache_ids, ids))


def _hidden_steps(captured: list[torch.Tensor], n_patients: int, batch_size: int,
                  n_samples: int, timesteps: int) -> np.ndarray:
    """The noise network's hidden inputs to its output layer, captured call by call
    (batch-major, then step T..1; rows patient-major over samples) -> `(T, N, H)`, the
    mean over each patient's samples, rows in step order t = T..1."""
    sizes = [min(batch_size, n_patients - start) for start in range(0, n_patients, batch_size)]
    if len(captured) != timesteps * len(sizes):
        raise RuntimeError(f"captured {len(captured)} noise-network calls, expected "
                           f"{timesteps} steps x {len(sizes)} batches")
    steps: list[list[np.ndarray]] = [[] for _ in range(timesteps)]
    for j, b in enumerate(sizes):
        for i in range(timesteps):
            h = captured[j * timesteps + i]
            steps[i].append(h.reshape(b, n_samples, -1).mean(dim=1).numpy())
    return np.stack([np.concatenate(parts) for parts in steps]).astype(np.float32)


def fold_trajectory(models_dir: str | Path, variant: str, fold: int, table_tsv: str | Path,
                    spec_json: str | Path, folds_tsv: str | Path, cache_dir: str | Path,
                    device: torch.device, member: str | None = None) -> FoldTrajectory:
    """Load `models_dir/variant/fold{fold}` (its subfolder `member`, e.g. `seed0`, when
    given) and run its test patients' reverse trajectories through `score_split`,
    capturing the noise network's hidden features at every step."""
    from mmfusion.train.scoring import score_split

    folder = Path(models_dir) / variant / f"fold{fold}"
    fold_model = load_fold_model(folder / member if member else folder, variant, fold)
    if fold_model.kind != "deep":
        raise ConfigError(f"{variant} fold {fold} is a {fold_model.kind} model; Fig. 3 "
                          "needs a diffusion variant", path=str(fold_model.folder),
                          fix="pass mmfusion or a Table 3 ablation (mmfusion_*)")
    model = build_model(fold_model, device)
    if not model.use_cfd:
        raise ConfigError(f"{variant} has no diffusion head (CFD): no reverse trajectory",
                          fix="pass mmfusion or a Table 3 ablation (mmfusion_*)")
    split = load_test_split(fold_model, table_tsv, spec_json, folds_tsv, cache_dir)
    captured: list[torch.Tensor] = []
    handle = model.cfd.noise_net.lin4.register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach().float().cpu()))
    try:
        scores = score_split(model, split, fold_model.batch_size, device, fold_model.seed,
                             fold_model.precision(device), trajectory=True)
    finally:
        handle.remove()
    assert scores.trajectory is not None
    hidden = _hidden_steps(captured, len(split.patient_ids), fold_model.batch_size,
                           int(model.cfg.n_samples), model.cfd.timesteps)
    return FoldTrajectory(variant, fold, split.patient_ids, split.labels, scores.trajectory,
                          scores.probability, fold_model.seed, int(model.cfg.n_samples),
                          hidden=hidden)


def compute_trajectories(models_dir: str | Path, variants: Sequence[str],
                         table_tsv: str | Path, spec_json: str | Path,
                         folds_tsv: str | Path, cache_dir: str | Path, out_dir: str | Path,
                         device: str | None = None, folds: Sequence[int] | None = None,
                         member: str | None = None) -> list[Path]:
    """Every variant x fold (`folds`; default: repeat 0's folds of `folds_tsv`): its
    trajectory file under `out_dir` (`trajectory_file`). `member`: the subfolder of each
    fold's folder holding the model (`seed0` with several training seeds). `device`: cpu |
    cuda | auto (None: `train.device`'s default). Returns the files written."""
    from mmfusion.settings import section_defaults
    from mmfusion.train.device import resolve_device

    folds = list(folds) if folds is not None else first_repeat_folds(folds_tsv)

    def sub(variant: str, fold: int) -> Path:
        return Path(models_dir) / variant / f"fold{fold}" / (member or "")

    backends = {load_fold_model(sub(v, k), v, k).graph_backend()
                for v in variants for k in folds}
    dev = resolve_device(device or section_defaults("train")["device"],
                         "dgl" if "dgl" in backends else "auto")
    written = []
    for variant in variants:
        for fold in folds:
            traj = fold_trajectory(models_dir, variant, fold, table_tsv, spec_json,
                                   folds_tsv, cache_dir, dev, member)
            path = trajectory_file(out_dir, variant, fold)
            traj.save(path)
            written.append(path)
            log.info("%s fold %d: %d test patients' trajectories on %s -> %s", variant,
                     fold, len(traj.labels), dev, path)
    return written


def first_repeat_folds(folds_tsv: str | Path) -> list[int]:
    """The folds of repeat 0 of `folds_tsv` (all of them without repeats)."""
    from mmfusion.cohort.folds import fold_repeats, read_folds

    return sorted(k for k, r in fold_repeats(read_folds(folds_tsv)).items() if r == 0)
