"""Patient-level stratified K-fold with a stratified validation split in each training part.

`folds.tsv` has one row per patient per fold: `patient_id, fold, split` with split in
train | val | test. Every patient is in the test split of exactly one fold; within a fold
the three splits are disjoint and cover the cohort. Seeded: same table + seed, same folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmfusion.errors import ConfigError, TableError
from mmfusion.io import atomic_path
from mmfusion.settings import schema_defaults

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
@schema_defaults("folds")
class FoldSettings:
    """Settings of the fold split (config section `folds`; defaults: the config schema).

    Attributes:
        n_folds: number of outer folds (paper: 3).
        val_fraction: share of each training part held out for validation.
        seed: random seed.
    """

    n_folds: int
    val_fraction: float
    seed: int

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ConfigError("folds.n_folds must be at least 2")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("folds.val_fraction must be between 0 and 1")



def make_folds(
    ids: list[str], labels: list[int] | np.ndarray, settings: FoldSettings
) -> pd.DataFrame:
    """Stratified patient-level folds; returns a long table (patient_id, fold, split)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    ids = [str(i) for i in ids]
    y = np.asarray(labels, dtype=int)
    if len(set(ids)) != len(ids):
        raise TableError("duplicate patient IDs in the cohort table")
    counts = np.bincount(y, minlength=2)
    if set(np.unique(y)) - {0, 1}:
        raise TableError("labels must be 0/1")
    # each class must reach every test fold and both train and val of every fold
    need = max(settings.n_folds, 3)
    if counts.min() < need:
        raise TableError(
            f"too few patients for {settings.n_folds} stratified folds with validation: "
            f"{counts[0]} negative, {counts[1]} positive (need >= {need} of each)",
            fix="lower folds.n_folds or add patients")
    outer = StratifiedKFold(settings.n_folds, shuffle=True, random_state=settings.seed)
    rows = []
    order = np.arange(len(ids))
    for k, (train_idx, test_idx) in enumerate(outer.split(order, y)):
        try:
            tr, va = train_test_split(train_idx, test_size=settings.val_fraction,
                                      stratify=y[train_idx], random_state=settings.seed + k + 1)
        except ValueError as err:
            raise TableError(f"cannot split fold {k} into train/val: {err}",
                             fix="raise folds.val_fraction or add patients") from err
        for split, idx in (("train", tr), ("val", va), ("test", test_idx)):
            rows.extend((ids[i], k, split) for i in idx)
    folds = pd.DataFrame(rows, columns=["patient_id", "fold", "split"])
    folds = folds.sort_values(["fold", "split", "patient_id"], kind="stable").reset_index(drop=True)
    check_folds(folds, ids)
    return folds


def check_folds(folds: pd.DataFrame, ids: list[str]) -> None:
    """Invariants: splits disjoint and complete per fold, each patient tested once."""
    assert set(folds["split"]) <= set(SPLITS)
    for _, part in folds.groupby("fold"):
        assert sorted(part["patient_id"]) == sorted(ids)  # each patient once per fold
    tested = folds.loc[folds["split"] == "test", "patient_id"]
    assert sorted(tested) == sorted(ids)  # each patient tested exactly once


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, sep="\t", index=False)


def read_folds(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"patient_id": str})
