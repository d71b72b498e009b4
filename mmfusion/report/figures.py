"""Report figures: pooled ROC curves, calibration, and per-fold AUC against the oracle."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from mmfusion.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_roc(predictions: pd.DataFrame, order: list[str], path: Path) -> None:
    """ROC of every variant over its pooled out-of-fold test predictions."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for variant in order:
        g = predictions[predictions["variant"] == variant]
        if g["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(g["label"], g["probability"])
        auc = roc_auc_score(g["label"], g["probability"])
        ax.plot(fpr, tpr, lw=1.6, label=f"{variant} (pooled AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, out-of-fold test sets")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_calibration(predictions: pd.DataFrame, order: list[str], path: Path,
                     n_bins: int = 5) -> None:
    """Observed LNM rate against mean predicted probability in quantile bins."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for variant in order:
        g = predictions[predictions["variant"] == variant]
        if len(g) < n_bins:
            continue
        bins = pd.qcut(g["probability"].rank(method="first"), n_bins, labels=False)
        agg = g.groupby(bins).agg(pred=("probability", "mean"), obs=("label", "mean"))
        ax.plot(agg["pred"], agg["obs"], marker="o", lw=1.2, label=variant)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability",
           ylabel="observed LNM rate", title=f"Calibration ({n_bins} quantile bins)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_auc_by_fold(metrics: pd.DataFrame, oracle: pd.DataFrame | None, order: list[str],
                     path: Path) -> None:
    """Test AUC of each fold (points) and its mean (bar) per variant, oracle alongside."""
    fig, ax = plt.subplots(figsize=(1.1 * (len(order) + 2), 4))
    names = list(order) + (["oracle"] if oracle is not None and len(oracle) else [])
    frames = [metrics[["variant", "fold", "auc"]].astype({"variant": str})]
    if oracle is not None:
        frames.append(oracle)
    allm = pd.concat(frames, ignore_index=True)
    for i, name in enumerate(names):
        vals = allm.loc[allm["variant"] == name, "auc"].astype(float).to_numpy()
        ax.bar(i, np.nanmean(vals), color="#9ecae1" if name != "oracle" else "#fdae6b")
        ax.scatter(np.full(len(vals), i), vals, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(ylim=(0, 1.02), ylabel="test AUC", title="Test AUC per fold (points) and mean (bars)")
    _save(fig, path)
