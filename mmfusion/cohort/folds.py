"""Patient-level stratified K-fold with a stratified validation split in each training part.

`folds.tsv` has one row per patient per fold: `patient_id, fold, split` with split in
train | val | test. Every patient is in the test split of exactly one fold; within a fold
the three splits are disjoint and cover the cohort. Seeded: same table + seed, same folds.

Repeated cross-validation (`folds.repeats` = R > 1): R independent stratified K-fold splits;
repeat r uses the split seed `repeat_seed(seed, r)` (repeat 0: `seed` itself, so its folds
are exactly those of R = 1). Fold g = r * K + k of `folds.tsv` is fold k of repeat r, and a
`repeat` column is added (only when R > 1, so R = 1 writes the very same file). Every
patient is tested once per repeat.
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
        seed: random seed (of repeat 0).
        repeats: number of repeated K-fold splits (1 = plain K-fold).
    """

    n_folds: int
    val_fraction: float
    seed: int
    repeats: int

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ConfigError("folds.n_folds must be at least 2")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("folds.val_fraction must be between 0 and 1")
        if self.repeats < 1:
            raise ConfigError("folds.repeats must be at least 1")

    @property
    def total_folds(self) -> int:
        """Folds over all repeats (R x K): the fold numbers 0 .. R*K - 1 of folds.tsv."""
        return self.n_folds * self.repeats


def repeat_seed(seed: int, repeat: int) -> int:
    """The split seed of repeat `repeat`: `seed` for repeat 0, else a 31-bit seed hashed
    from (seed, repeat) by numpy's SeedSequence (deterministic, well spread)."""
    if repeat == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), int(repeat)], spawn_key=(0xF01D,))
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)


def fold_repeats(folds: pd.DataFrame) -> dict[int, int]:
    """Fold number -> repeat (0 for every fold of a folds.tsv without a `repeat` column)."""
    if "repeat" not in folds:
        return {int(k): 0 for k in folds["fold"].unique()}
    pairs = folds[["fold", "repeat"]].drop_duplicates()
    return {int(k): int(r) for k, r in zip(pairs["fold"], pairs["repeat"], strict=True)}


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
    rows = []
    order = np.arange(len(ids))
    for r in range(settings.repeats):
        seed = repeat_seed(settings.seed, r)
        outer = StratifiedKFold(settings.n_folds, shuffle=True, random_state=seed)
        for k, (train_idx, test_idx) in enumerate(outer.split(order, y)):
            g = r * settings.n_folds + k
            try:
                tr, va = train_test_split(train_idx, test_size=settings.val_fraction,
                                          stratify=y[train_idx], random_state=seed + k + 1)
            except ValueError as err:
                raise TableError(f"cannot split fold {g} into train/val: {err}",
                                 fix="raise folds.val_fraction or add patients") from err
            for split, idx in (("train", tr), ("val", va), ("test", test_idx)):
                rows.extend((ids[i], g, split, r) for i in idx)
    folds = pd.DataFrame(rows, columns=["patient_id", "fold", "split", "repeat"])
    folds = folds.sort_values(["fold", "split", "patient_id"], kind="stable").reset_index(drop=True)
    if settings.repeats == 1:
        folds = folds.drop(columns="repeat")  # R = 1: today's file, byte for byte
    check_folds(folds, ids)
    return folds


def check_folds(folds: pd.DataFrame, ids: list[str]) -> None:
    """Invariants: splits disjoint and complete per fold, each patient tested once per
    repeat."""
    assert set(folds["split"]) <= set(SPLITS)
    for _, part in folds.groupby("fold"):
        assert sorted(part["patient_id"]) == sorted(ids)  # each patient once per fold
    repeats = folds["repeat"] if "repeat" in folds else pd.Series(0, index=folds.index)
    for _, part in folds[folds["split"] == "test"].groupby(repeats):
        assert sorted(part["patient_id"]) == sorted(ids)  # tested exactly once per repeat


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, sep="\t", index=False)


def read_folds(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"patient_id": str})
