"""Paper Fig. 3's inference: the CFD reverse trajectories of every fold's test patients.

For each fold model of a diffusion variant (`mmfusion` and its Table 3 ablations), the
fold's **test** patients are scored by the one scoring function
(`mmfusion.train.scoring.score_split`, the fold's seed and batch size, `trajectory=True`),
so the last step of a patient's trajectory is the very sample set that scored it in the
fold's `predictions.csv`. Each fold's trajectory is written as
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


def fold_trajectory(models_dir: str | Path, variant: str, fold: int, table_tsv: str | Path,
                    spec_json: str | Path, folds_tsv: str | Path, cache_dir: str | Path,
                    device: torch.device) -> FoldTrajectory:
    """Load `models_dir/variant/fold{fold}` and run its test patients' reverse
    trajectories through `score_split`."""
    from mmfusion.train.scoring import score_split

    fold_model = load_fold_model(Path(models_dir) / variant / f"fold{fold}", variant, fold)
    if fold_model.kind != "deep":
        raise ConfigError(f"{variant} fold {fold} is a {fold_model.kind} model; Fig. 3 "
                          "needs a diffusion variant", path=str(fold_model.folder),
                          fix="pass mmfusion or a Table 3 ablation (mmfusion_*)")
    model = build_model(fold_model, device)
    if not model.use_cfd:
        raise ConfigError(f"{variant} has no diffusion head (CFD): no reverse trajectory",
                          fix="pass mmfusion or a Table 3 ablation (mmfusion_*)")
    split = load_test_split(fold_model, table_tsv, spec_json, folds_tsv, cache_dir)
    scores = score_split(model, split, fold_model.batch_size, device, fold_model.seed,
                         fold_model.precision(device), trajectory=True)
    assert scores.trajectory is not None
    return FoldTrajectory(variant, fold, split.patient_ids, split.labels, scores.trajectory,
                          scores.probability, fold_model.seed, int(model.cfg.n_samples))


def compute_trajectories(models_dir: str | Path, variants: Sequence[str],
                         table_tsv: str | Path, spec_json: str | Path,
                         folds_tsv: str | Path, cache_dir: str | Path, out_dir: str | Path,
                         device: str | None = None) -> list[Path]:
    """Every variant x fold of `folds_tsv`: its trajectory file under `out_dir`
    (`trajectory_file`). `device`: cpu | cuda | auto (None: `train.device`'s default).
    Returns the files written."""
    from mmfusion.cohort.folds import read_folds
    from mmfusion.settings import section_defaults
    from mmfusion.train.device import resolve_device

    folds = sorted(int(k) for k in read_folds(folds_tsv)["fold"].unique())
    backends = {load_fold_model(Path(models_dir) / v / f"fold{k}", v, k).graph_backend()
                for v in variants for k in folds}
    dev = resolve_device(device or section_defaults("train")["device"],
                         "dgl" if "dgl" in backends else "auto")
    written = []
    for variant in variants:
        for fold in folds:
            traj = fold_trajectory(models_dir, variant, fold, table_tsv, spec_json,
                                   folds_tsv, cache_dir, dev)
            path = trajectory_file(out_dir, variant, fold)
            traj.save(path)
            written.append(path)
            log.info("%s fold %d: %d test patients' trajectories on %s -> %s", variant,
                     fold, len(traj.labels), dev, path)
    return written
