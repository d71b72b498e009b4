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


def fit_baseline(name: str, train: Mapping[str, np.ndarray], y_train: np.ndarray,
                 seed: int = 0) -> ClassifierMixin:
    """Baseline `name` fitted on the training arrays (group -> `(N_train, w)`)."""
    model = make_baseline(name, seed)
    model.fit(stack_groups(train), np.asarray(y_train).astype(int))
    return model


def fit_predict_baseline(name: str, train: Mapping[str, np.ndarray], y_train: np.ndarray,
                         others: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0,
                         fitted: list[ClassifierMixin] | None = None
                         ) -> dict[str, np.ndarray]:
    """Fit `name` on the training arrays; return class-1 probabilities for each other split.

    Args:
        train: group -> `(N_train, w)` arrays; y_train: `(N_train,)` 0/1 labels.
        others: split name -> group arrays (e.g. `{"val": ..., "test": ...}`).
        fitted: when given, the fitted model is appended to it (for `baseline_parameters`).
    """
    model = fit_baseline(name, train, y_train, seed)
    if fitted is not None:
        fitted.append(model)
    return {split: model.predict_proba(stack_groups(arrays))[:, 1]
            for split, arrays in others.items()}


# ---- parameters as plain arrays (stored without pickle; scored by numpy alone) ----------
_TREE_FIELDS = ("feature_idx", "num_threshold", "missing_go_to_left", "left", "right",
                "is_leaf", "value")


def baseline_parameters(model: ClassifierMixin) -> dict[str, np.ndarray]:
    """A fitted baseline as named numpy arrays (`np.savez`, no pickle), which
    `probabilities_from_parameters` scores exactly as `model.predict_proba` does.

    `logreg`: `coef` `(1, d)`, `intercept` `(1,)`. `gbm` (binary, numerical features): the
    baseline raw score and every tree's nodes (sklearn's predictor records, concatenated;
    `tree_offsets` `(n_trees + 1,)` delimit the trees; children index within a tree).

    Raises:
        ConfigError: a model this export does not know (e.g. categorical splits).
    """
    if isinstance(model, LogisticRegression):
        if model.coef_.shape[0] != 1:
            raise ConfigError("only binary logistic regression can be exported")
        # in the fitted dtype (float32 on float32 arrays): scored in it, as sklearn does
        return {"kind": np.array("logreg"), "coef": np.asarray(model.coef_),
                "intercept": np.asarray(model.intercept_)}
    if isinstance(model, HistGradientBoostingClassifier):
        trees = [iteration[0].nodes for iteration in model._predictors]  # binary: one each
        if any(len(it) != 1 for it in model._predictors) or any(
                t["is_categorical"].any() for t in trees):
            raise ConfigError("only binary gradient boosting on numerical features can be "
                              "exported")
        nodes = np.concatenate(trees) if trees else np.zeros(0, trees[0].dtype)
        out = {"kind": np.array("gbm"),
               "baseline": np.asarray(model._baseline_prediction, np.float64).ravel(),
               "tree_offsets": np.cumsum([0, *(len(t) for t in trees)]).astype(np.int64)}
        out.update({f"nodes_{f}": np.ascontiguousarray(nodes[f]) for f in _TREE_FIELDS})
        return out
    raise ConfigError(f"cannot export a {type(model).__name__}")


def _tree_values(params: Mapping[str, np.ndarray], start: int, stop: int,
                 x: np.ndarray) -> np.ndarray:
    """Leaf value of one tree (nodes `start:stop`) for every row of `x` (float64)."""
    f = {name: params[f"nodes_{name}"][start:stop] for name in _TREE_FIELDS}
    node = np.zeros(len(x), dtype=np.int64)
    rows = np.arange(len(x))
    while True:
        inner = ~f["is_leaf"][node].astype(bool)
        if not inner.any():
            return f["value"][node]
        r, n = rows[inner], node[inner]
        value = x[r, f["feature_idx"][n]]
        left = np.where(np.isnan(value), f["missing_go_to_left"][n].astype(bool),
                        value <= f["num_threshold"][n])
        node[r] = np.where(left, f["left"][n], f["right"][n]).astype(np.int64)


def probabilities_from_parameters(params: Mapping[str, np.ndarray],
                                  arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Class-1 probabilities `(N,)` of exported baseline `params` on group `arrays`."""
    from scipy.special import expit

    x = stack_groups(arrays)
    kind = str(params["kind"])
    if kind == "logreg":
        coef = params["coef"]
        return expit(x.astype(coef.dtype) @ coef.T + params["intercept"]).ravel()
    if kind == "gbm":
        x = x.astype(np.float64)  # sklearn's trees compare float64 values
        raw = np.full(len(x), float(params["baseline"][0]))
        offsets = params["tree_offsets"]
        for start, stop in zip(offsets[:-1], offsets[1:], strict=True):
            raw += _tree_values(params, int(start), int(stop), x)
        return expit(raw)
    raise ConfigError(f"unknown exported baseline kind {kind!r}")
