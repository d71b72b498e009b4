"""Validation-fitted recalibration of a fold model's probabilities, the same for every variant.

Each fold's model (deep variant or baseline) gives raw probabilities p. After the model is
fixed, one map

    p' = sigmoid(a * logit(p) + b)

is fitted on that fold's VALIDATION split only (its raw probabilities and labels) and
applied to validation and test alike; the validation threshold (Youden) is then chosen on
p', and test is scored once with p'. `train.recalibration` picks the map:

- `platt` (default): slope a and intercept b (Platt 1999), by maximum likelihood against
  Platt's smoothed targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) (as scikit-learn's
  sigmoid calibration), which keep the fit finite when validation separates the classes.
  The intercept is what the variants need most: a class-balanced logistic regression, or
  a network whose probabilities sit near 0 while 20-50 % of patients are positive, is
  off in calibration-in-the-large, which a slope alone cannot move.
- `temperature`: slope a only (b = 0; a = 1 / temperature).
- `none`: identity.

The slope is kept in [SLOPE_MIN, SLOPE_MAX], so the map is strictly increasing: it never
reverses the model's ranking (test AUC is unchanged, up to the 6 decimals written); a
validation split that ranks no better than chance holds the slope at SLOPE_MIN (nearly the
validation rate for everyone) and says so in `note`. Probabilities are clipped to
[EPS, 1 - EPS] before the logit. Identity, with the reason in `note`, when validation has
fewer than MIN_PER_CLASS patients of either class or a non-finite probability. The fit is
deterministic (L-BFGS-B from the identity, analytic gradient).

MMFusion's `difference` mapping keeps its own validation-fitted temperature
(`CFD.fit_temperature`): it maps each diffusion sample to a probability before the samples
are averaged, so it shapes the sample spread (`uncertainty`) and is part of the model, as
CARD's mapping is for `card`. This generic map is applied on top, to the model's final
(mean-over-samples) probability, exactly as for every other variant. `uncertainty` in a
fold's predictions stays the model's own spread over its samples (before this map);
`mmfusion predict` applies each fold's map to every sample before it takes the spread over
folds x samples, so that spread is on the probability scale it reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logit

from mmfusion.errors import ConfigError

METHODS = ("platt", "temperature", "none")
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit
MIN_PER_CLASS = 3  # fewer validation patients of a class: identity
SLOPE_MIN, SLOPE_MAX = 1e-2, 1e2
INTERCEPT_MAX = 30.0


@dataclass(frozen=True)
class Recalibrator:
    """p' = sigmoid(slope * logit(p) + intercept), fitted on validation (`fit_recalibrator`).

    `fitted` is False for the identity; `note` says why a fit was skipped or held at a
    bound. `n_val`, `n_val_positive` and the validation Brier scores before and after
    describe the validation split it was fitted on (nothing here comes from test)."""

    method: str = "none"
    slope: float = 1.0
    intercept: float = 0.0
    fitted: bool = False
    note: str = ""
    n_val: int = 0
    n_val_positive: int = 0
    val_brier_raw: float = math.nan
    val_brier: float = math.nan

    @property
    def is_identity(self) -> bool:
        return self.slope == 1.0 and self.intercept == 0.0

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Recalibrated probabilities, same shape as `p` (any shape; float64). The identity
        returns `p` unchanged (not clipped)."""
        p = np.asarray(p, dtype=np.float64)
        if self.is_identity:
            return p.copy()
        return expit(self.slope * _logit(p) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        """The record written to metrics.json and scoring.json (`from_dict` reads it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any] | None) -> Recalibrator:
        """From `to_dict`'s record; None (a fold scored before recalibration existed):
        the identity."""
        if record is None:
            return cls(note="no recalibration recorded")
        values = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        for key in ("val_brier_raw", "val_brier"):  # JSON writes NaN as null
            if values.get(key) is None:
                values.pop(key, None)
        return cls(**values)


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1.0 - EPS))


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2)) if len(y) else math.nan


def check_method(method: str) -> str:
    """`method` when it is one of METHODS, else a ConfigError naming them."""
    if method not in METHODS:
        raise ConfigError(f"unknown train.recalibration {method!r}",
                          fix=f"use one of {list(METHODS)}")
    return method


def _smoothed_targets(y: np.ndarray) -> np.ndarray:
    """Platt's targets: (N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _fit(z: np.ndarray, t: np.ndarray, intercept: bool) -> tuple[float, float]:
    """(slope, intercept) minimising the cross-entropy of sigmoid(a z + b) against the
    targets t (b = 0 without `intercept`), within the bounds."""

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta[0], theta[1] if intercept else 0.0
        eta = a * z + b
        value = -float(np.sum(t * log_expit(eta) + (1 - t) * log_expit(-eta)))
        resid = expit(eta) - t
        grad = [float(resid @ z)] + ([float(resid.sum())] if intercept else [])
        return value, np.array(grad)

    start = np.array([1.0, 0.0] if intercept else [1.0])
    bounds = [(SLOPE_MIN, SLOPE_MAX)] + ([(-INTERCEPT_MAX, INTERCEPT_MAX)] if intercept else [])
    res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10})
    return float(res.x[0]), float(res.x[1]) if intercept else 0.0


def fit_recalibrator(p_val: np.ndarray, y_val: np.ndarray, method: str) -> Recalibrator:
    """Fit `method` (`platt`, `temperature`, `none`) on the validation split's raw
    probabilities `p_val` `(N,)` and 0/1 labels `y_val` `(N,)`; see the module doc.
    Never give it test data."""
    check_method(method)
    p = np.asarray(p_val, dtype=np.float64).ravel()
    y = np.asarray(y_val).astype(int).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.shape[0]} probabilities for {y.shape[0]} labels")
    n_pos = int(y.sum())
    base = {"method": method, "n_val": int(len(y)), "n_val_positive": n_pos,
            "val_brier_raw": _brier(p, y), "val_brier": _brier(p, y)}
    if method == "none":
        return Recalibrator(**base, note="train.recalibration is none")
    if not np.all(np.isfinite(p)):
        return Recalibrator(**base, note="identity: a validation probability is not finite")
    if min(n_pos, len(y) - n_pos) < MIN_PER_CLASS:
        return Recalibrator(**base, note=f"identity: validation has {n_pos} positive and "
                            f"{len(y) - n_pos} negative patient(s), fewer than "
                            f"{MIN_PER_CLASS} of a class")
    slope, intercept = _fit(_logit(p), _smoothed_targets(y), intercept=method == "platt")
    note = ""
    if slope <= SLOPE_MIN * (1 + 1e-6):
        note = ("slope held at its lower bound: validation ranks no better than chance, "
                "the map keeps the model's ranking")
    elif slope >= SLOPE_MAX * (1 - 1e-6):
        note = "slope held at its upper bound"
    fitted = Recalibrator(method=method, slope=slope, intercept=intercept, fitted=True,
                          note=note, n_val=base["n_val"], n_val_positive=n_pos,
                          val_brier_raw=base["val_brier_raw"])
    return Recalibrator(**{**asdict(fitted), "val_brier": _brier(fitted.apply(p), y)})
