"""Classical baselines on the same folds: logistic regression and gradient boosting.

They see clinical + hematology + radiomics arrays from the in-fold preprocessing
(`FoldPreprocessor.transform`, fitted on the training rows only), concatenated in a fixed
group order. Output names match the deep variants' (`logreg`, `gbm`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from mmfusion.errors import ConfigError
from mmfusion.model.variants import BASELINES

GROUPS = ("clinical", "hematology", "radiomics_tumour", "radiomics_node")


def stack_groups(arrays: Mapping[str, np.ndarray], groups: tuple[str, ...] = GROUPS
                 ) -> np.ndarray:
    """Concatenate the tabular groups present in `arrays` -> `(N, total width)` float32."""
    parts = [np.asarray(arrays[g], dtype=np.float32) for g in groups if g in arrays]
    parts = [p.reshape(p.shape[0], -1) for p in parts]
    if not parts:
        raise ValueError(f"none of the groups {groups} is in the arrays")
    return np.concatenate(parts, axis=1)


def make_baseline(name: str, seed: int = 0) -> ClassifierMixin:
    """An unfitted baseline classifier: `logreg` or `gbm`."""
    if name == "logreg":
        return LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
    if name == "gbm":
        # Small cohorts: sklearn's default min_samples_leaf=20 leaves ~30 training rows
        # unsplittable (a constant prediction); shallow trees with small leaves instead.
        return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, max_depth=3,
                                              max_leaf_nodes=8, min_samples_leaf=3,
                                              l2_regularization=1.0, class_weight="balanced",
                                              random_state=seed)
    raise ConfigError(f"unknown baseline {name!r}", fix=f"use one of {list(BASELINES)}")


def fit_predict_baseline(name: str, train: Mapping[str, np.ndarray], y_train: np.ndarray,
                         others: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0
                         ) -> dict[str, np.ndarray]:
    """Fit `name` on the training arrays; return class-1 probabilities for each other split.

    Args:
        train: group -> `(N_train, w)` arrays; y_train: `(N_train,)` 0/1 labels.
        others: split name -> group arrays (e.g. `{"val": ..., "test": ...}`).
    """
    model = make_baseline(name, seed)
    model.fit(stack_groups(train), np.asarray(y_train).astype(int))
    return {split: model.predict_proba(stack_groups(arrays))[:, 1]
            for split, arrays in others.items()}
