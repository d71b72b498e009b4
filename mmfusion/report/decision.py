"""Decision curve analysis (Vickers & Elkin, Med Decis Making 2006).

At threshold probability p_t a patient is treated (here: called node-positive) when the
predicted probability is >= p_t, and

    net benefit(p_t) = TP / n - FP / n * p_t / (1 - p_t),

i.e. true positives minus false positives weighted by the odds of the threshold: the harm
of an unnecessary treatment relative to the benefit of a necessary one that a reader
choosing p_t accepts. Treat-all has net benefit prevalence - (1 - prevalence) p_t/(1 - p_t),
treat-none 0. Curves are computed over every variant's out-of-fold test predictions pooled
over the folds, so they mix the folds' probability scales (each fold has its own model and,
for MMFusion, its own validation-fitted temperature).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TREAT_ALL = "treat all"
TREAT_NONE = "treat none"


def default_thresholds() -> np.ndarray:
    """Threshold probabilities 0.01, 0.02, ..., 0.99."""
    return np.round(np.arange(1, 100) / 100, 2)


def net_benefit(labels: np.ndarray, probabilities: np.ndarray,
                thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of treating `probability >= t`, for every t in `thresholds` (in (0, 1))."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probabilities, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    if np.any((t <= 0) | (t >= 1)):
        raise ValueError("threshold probabilities must lie strictly between 0 and 1")
    n = len(y)
    if n == 0:
        return np.full(t.shape, np.nan)
    treated = p[None, :] >= t[:, None]
    tp = (treated & (y[None, :] == 1)).sum(axis=1)
    fp = (treated & (y[None, :] == 0)).sum(axis=1)
    return tp / n - fp / n * t / (1 - t)


def treat_all_benefit(prevalence: float, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of treating everyone."""
    t = np.asarray(thresholds, dtype=float)
    return prevalence - (1 - prevalence) * t / (1 - t)


def decision_curves(predictions: pd.DataFrame, order: list[str],
                    thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Long table (curve, threshold, net_benefit, n, prevalence): one curve per variant
    over its pooled test predictions, plus `treat all` and `treat none`.

    The reference curves use the patients of the first variant (every variant scores the
    same test patients); a variant scored on other patients is still compared to it.
    """
    t = default_thresholds() if thresholds is None else np.asarray(thresholds, dtype=float)
    frames = []
    reference_labels = None
    for variant in order:
        g = predictions[predictions["variant"] == variant]
        if g.empty:
            continue
        y = g["label"].to_numpy().astype(int)
        if reference_labels is None:
            reference_labels = y
        frames.append(pd.DataFrame({"curve": variant, "threshold": t,
                                    "net_benefit": net_benefit(y, g["probability"], t),
                                    "n": len(y), "prevalence": y.mean()}))
    if reference_labels is not None:
        prev = float(reference_labels.mean())
        n = len(reference_labels)
        frames.append(pd.DataFrame({"curve": TREAT_ALL, "threshold": t,
                                    "net_benefit": treat_all_benefit(prev, t),
                                    "n": n, "prevalence": prev}))
        frames.append(pd.DataFrame({"curve": TREAT_NONE, "threshold": t, "net_benefit": 0.0,
                                    "n": n, "prevalence": prev}))
    if not frames:
        return pd.DataFrame(columns=["curve", "threshold", "net_benefit", "n", "prevalence"])
    return pd.concat(frames, ignore_index=True)
