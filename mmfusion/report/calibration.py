"""Calibration of predicted probabilities: logistic recalibration and readable bins.

Logistic recalibration (Cox 1958; Van Calster et al., J Clin Epidemiol 2016) fits

    logit P(y = 1) = a + b * logit(p)

by maximum likelihood: slope b = 1 and intercept a = 0 for perfectly calibrated
probabilities; b < 1 means over-confident predictions (too extreme), b > 1 too timid.
Calibration-in-the-large is the intercept with the slope fixed at 1 (logit(p) as an
offset): > 0 means the model under-predicts the event rate on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit


@dataclass(frozen=True)
class Recalibration:
    """Logistic recalibration of one set of predictions (NaN when it cannot be fitted)."""

    intercept: float
    slope: float
    calibration_in_the_large: float


def _logistic_fit(x: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 100
                  ) -> np.ndarray | None:
    """Maximum-likelihood coefficients of logit P(y) = x @ beta + offset (Newton-Raphson with
    step halving); None when it does not converge (e.g. complete separation)."""
    beta = np.zeros(x.shape[1])

    def loglik(b: np.ndarray) -> float:
        eta = x @ b + offset
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    current = loglik(beta)
    for _ in range(max_iter):
        mu = expit(x @ beta + offset)
        hessian = x.T @ (x * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):  # halve the step until the likelihood does not drop
            new = loglik(beta + step)
            if new >= current - 1e-12:
                break
            step = step / 2
        beta, current = beta + step, new
        if np.max(np.abs(step)) < 1e-9:
            return beta if np.all(np.abs(beta) < 1e3) else None
    return None


def recalibrate(labels: np.ndarray, probabilities: np.ndarray) -> Recalibration:
    """Intercept and slope of logit(y) ~ a + b logit(p), and calibration-in-the-large."""
    y = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probabilities, dtype=float), EPS, 1 - EPS)
    nan = Recalibration(float("nan"), float("nan"), float("nan"))
    if len(y) < 3 or y.min() == y.max():
        return nan
    lp = logit(p)
    ones = np.ones((len(y), 1))
    joint = _logistic_fit(np.column_stack([ones, lp]), y, np.zeros(len(y)))
    citl = _logistic_fit(ones, y, lp)
    return Recalibration(
        intercept=float(joint[0]) if joint is not None else float("nan"),
        slope=float(joint[1]) if joint is not None else float("nan"),
        calibration_in_the_large=float(citl[0]) if citl is not None else float("nan"))


def _wilson(events: int, n: int, z: float = float(norm.ppf(0.975))) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    rate = events / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # rounding can put a bound a hair past the rate when the rate is 0 or 1
    return float(max(0.0, min(rate, centre - half))), float(min(1.0, max(rate, centre + half)))


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, min_per_bin: int = 10,
                     max_bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of the sorted predictions, each with at least `min_per_bin` patients
    (one bin when there are fewer): mean predicted, observed rate and its Wilson 95% CI."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probabilities, dtype=float)
    n_bins = int(min(max_bins, max(1, len(y) // min_per_bin)))
    order = np.argsort(p, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, n_bins)):
        if len(idx) == 0:
            continue
        lo, hi = _wilson(int(y[idx].sum()), len(idx))
        rows.append({"bin": i, "n": len(idx), "mean_predicted": float(p[idx].mean()),
                     "observed": float(y[idx].mean()), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["bin", "n", "mean_predicted", "observed", "ci_low",
                                       "ci_high"])


def _row(variant: str, fold: str, g: pd.DataFrame) -> dict[str, object]:
    y, p = g["label"].to_numpy().astype(int), g["probability"].to_numpy(dtype=float)
    fit = recalibrate(y, p)
    return {"variant": variant, "fold": fold, "n": len(y), "events": int(y.sum()),
            "mean_predicted": float(p.mean()), "observed_rate": float(y.mean()),
            "intercept": fit.intercept, "slope": fit.slope,
            "calibration_in_the_large": fit.calibration_in_the_large,
            "brier": float(np.mean((p - y) ** 2))}


def calibration_table(predictions: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """calibration.csv: per variant, the recalibration of its test predictions pooled over
    folds (`fold` = `pooled`; mixes the folds' probability scales) and of each fold."""
    rows = []
    for variant in order:
        g = predictions[predictions["variant"] == variant]
        if g.empty:
            continue
        rows.append(_row(variant, "pooled", g))
        for fold, gf in g.groupby("fold", sort=True):
            rows.append(_row(variant, str(int(fold)), gf))
    return pd.DataFrame(rows, columns=["variant", "fold", "n", "events", "mean_predicted",
                                       "observed_rate", "intercept", "slope",
                                       "calibration_in_the_large", "brier"])
