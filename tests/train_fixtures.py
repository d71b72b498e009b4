"""Shared tiny training cohort files for the train CLI and frozen-backbone tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def write_tables(root: Path, n: int, n_train: int, n_val: int = 4
                 ) -> tuple[list[str], np.random.Generator]:
    """table.tsv, spec.json and folds.tsv (fold 0: n_train / n_val / rest test) for `n`
    patients with alternating labels. Returns the IDs and the generator, to draw patches."""
    rng = np.random.default_rng(0)
    ids = [f"P{i:02d}" for i in range(n)]
    y = np.array([0, 1] * (n // 2))
    pd.DataFrame({"patient_id": ids, "label": y, "age": rng.normal(60, 5, n) + 5 * y,
                  "sex": rng.choice(["M", "F"], n), "wbc": rng.normal(7, 1, n),
                  "gtvt_original_firstorder_Mean": rng.normal(size=n) + y,
                  "gtvt_original_shape_Volume": rng.normal(size=n),
                  "gtvn_original_firstorder_Mean": rng.normal(size=n),
                  "gtvn_present": np.ones(n, int)}).to_csv(root / "table.tsv", sep="\t",
                                                             index=False)
    spec = {"groups": {"clinical": {"numeric": ["age"], "categorical": {"sex": ["M", "F"]}},
                       "hematology": {"numeric": ["wbc"], "categorical": {}},
                       "radiomics_tumour": ["gtvt_original_firstorder_Mean",
                                            "gtvt_original_shape_Volume"],
                       "radiomics_node": ["gtvn_original_firstorder_Mean"]},
            "flags": {"radiomics_node": ["gtvn_present"]}}
    (root / "spec.json").write_text(json.dumps(spec))
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    pd.DataFrame({"patient_id": ids, "fold": 0, "split": split}).to_csv(
        root / "folds.tsv", sep="\t", index=False)
    return ids, rng


def write_random_patches(root: Path, ids: list[str], rng: np.random.Generator) -> None:
    """`patients/{id}/patches.npz` of tiny random patches (one node present) per patient."""
    for pid in ids:
        folder = root / "patients" / pid
        folder.mkdir(parents=True)
        np.savez_compressed(folder / "patches.npz",
                            tumour=rng.normal(size=(8, 16, 16)).astype(np.float32),
                            node1=rng.normal(size=(6, 12, 12)).astype(np.float32),
                            node2=np.zeros((4, 8, 8), np.float32),
                            node3=np.zeros((4, 8, 8), np.float32),
                            node_present=np.array([1, 0, 0], np.uint8), meta="{}")
