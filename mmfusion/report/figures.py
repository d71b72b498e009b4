"""Report figures: pooled ROC curves, calibration, confusion matrices, decision curves and
per-fold AUC against the oracle."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.special import expit, logit  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from mmfusion.io import atomic_path  # noqa: E402
from mmfusion.report.calibration import calibration_bins, recalibrate  # noqa: E402
from mmfusion.report.decision import TREAT_ALL, TREAT_NONE  # noqa: E402


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


def _grid(n: int, width: float = 3.2, height: float = 3.0) -> tuple[plt.Figure, list]:
    cols = min(3, max(1, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_calibration(predictions: pd.DataFrame, order: list[str], path: Path,
                     table: pd.DataFrame | None = None, min_per_bin: int = 10) -> None:
    """One panel per variant: observed LNM rate (Wilson 95% CI) against mean predicted
    probability in equal-count bins of >= `min_per_bin` pooled test patients, the logistic
    recalibration curve, and its slope and intercept (from `table`, calibration.csv's
    pooled rows, or refitted here) in the legend."""
    shown = [v for v in order if (predictions["variant"] == v).any()]
    fig, axes = _grid(max(1, len(shown)))
    grid = np.linspace(0.001, 0.999, 200)
    for ax, variant in zip(axes, shown, strict=False):
        g = predictions[predictions["variant"] == variant]
        y, p = g["label"].to_numpy(), g["probability"].to_numpy(dtype=float)
        bins = calibration_bins(y, p, min_per_bin=min_per_bin)
        pooled = None if table is None else table[(table["variant"] == variant)
                                                  & (table["fold"].astype(str) == "pooled")]
        if pooled is not None and len(pooled):
            a, b = float(pooled["intercept"].iloc[0]), float(pooled["slope"].iloc[0])
        else:
            fit = recalibrate(y, p)
            a, b = fit.intercept, fit.slope
        err = np.vstack([bins["observed"] - bins["ci_low"], bins["ci_high"] - bins["observed"]])
        ax.errorbar(bins["mean_predicted"], bins["observed"], yerr=err, fmt="o", ms=4,
                    capsize=2, color="#1f77b4",
                    label=f"{len(bins)} bins of ≥{int(bins['n'].min())} patients")
        if np.isfinite(a) and np.isfinite(b):
            ax.plot(grid, expit(a + b * logit(grid)), color="#d62728", lw=1.2,
                    label=f"slope {b:.2f}, intercept {a:+.2f}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{variant} (n={len(y)})",
               xlabel="predicted probability", ylabel="observed LNM rate")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Calibration of the pooled out-of-fold test predictions", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(confusion: pd.DataFrame, order: list[str], path: Path,
                   threshold: str = "validation") -> None:
    """2 x 2 confusion matrix per variant, summed over the test folds, at each fold's
    validation-chosen threshold (`threshold="validation"`) or at 0.5 (`"0.5"`)."""
    rows = confusion[confusion["threshold"] == threshold].set_index("variant")
    shown = [v for v in order if v in rows.index]
    fig, axes = _grid(max(1, len(shown)), width=2.8, height=2.7)
    if not shown:  # no fold recorded a threshold (metrics.json without `threshold`)
        axes[0].text(0.5, 0.5, f"no confusion matrix at threshold {threshold}", ha="center",
                     va="center")
        axes[0].set_axis_off()
    for ax, variant in zip(axes, shown, strict=False):
        r = rows.loc[variant]
        m = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], dtype=int)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, m.max()))
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=11,
                    color="white" if v > m.max() / 2 else "black")
        ax.set_xticks([0, 1], ["pred. N0", "pred. N+"])
        ax.set_yticks([0, 1], ["true N0", "true N+"])
        ax.set_title(f"{variant}\nsens {r['recall']:.2f}, spec {r['specificity']:.2f}",
                     fontsize=9)
    label = "each fold's validation-chosen threshold" if threshold == "validation" \
        else f"threshold {threshold}"
    fig.suptitle(f"Test confusion matrices summed over folds ({label})", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_decision_curves(curves: pd.DataFrame, order: list[str], path: Path) -> None:
    """Net benefit against threshold probability: every variant, treat all, treat none."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for variant in order:
        c = curves[curves["curve"] == variant]
        if len(c):
            ax.plot(c["threshold"], c["net_benefit"], lw=1.4, label=variant)
    for name, style in ((TREAT_ALL, dict(color="black", lw=1.0, ls="-.")),
                        (TREAT_NONE, dict(color="grey", lw=1.0, ls="--"))):
        c = curves[curves["curve"] == name]
        if len(c):
            ax.plot(c["threshold"], c["net_benefit"], label=name, **style)
    prevalence = float(curves["prevalence"].iloc[0]) if len(curves) else 0.5
    ax.set(xlim=(0, 1), ylim=(-0.05, max(0.05, prevalence) * 1.15),
           xlabel="threshold probability", ylabel="net benefit",
           title="Decision curves, pooled out-of-fold test predictions")
    ax.legend(fontsize=8, loc="upper right")
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


LABEL_COLOURS = {0: ("#1f77b4", "N0"), 1: ("#d62728", "N+")}


def plot_trajectory_fold(table: pd.DataFrame, db_rows: list[dict], path: Path) -> None:
    """Paper Fig. 3, one fold: t-SNE of the test patients' representations at each step
    t = T..0 (`mmfusion.report.trajectory.analyse`: `table` per patient and step, `db_rows`
    per step), coloured by label, one panel per step."""
    steps = [int(r["step"]) for r in db_rows]
    fig, axes = _grid(max(1, len(steps)), width=2.8, height=2.7)
    for ax, row in zip(axes, db_rows, strict=False):
        g = table[table["step"] == row["step"]]
        if g["tsne_1"].isna().all():
            ax.text(0.5, 0.5, f"{len(g)} patients:\ntoo few for t-SNE", ha="center",
                    va="center", fontsize=8, transform=ax.transAxes)
        for label, (colour, name) in LABEL_COLOURS.items():
            h = g[g["label"] == label]
            ax.scatter(h["tsne_1"], h["tsne_2"], s=14, color=colour, label=name, alpha=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t = {int(row['step'])}, DB {row['davies_bouldin']:.2f}", fontsize=9)
    if len(db_rows):
        axes[0].legend(fontsize=7, loc="best")
        r = db_rows[0]
        fig.suptitle(f"{r['variant']} fold {r['fold']}: t-SNE of the mean reverse-process "
                     f"y_t of {r['n_patients']} test patients ({r['n_positive']} N+)\n"
                     "DB: Davies-Bouldin of the two classes on y_t itself (not the t-SNE)",
                     fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_davies_bouldin(db: pd.DataFrame, path: Path) -> None:
    """Davies–Bouldin score of the two classes (on the representation) against step t,
    one line per fold, the reverse process running left to right (T -> 0)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for fold, g in db.groupby("fold"):
        g = g.sort_values("step", ascending=False)
        ax.plot(g["step"], g["davies_bouldin"], marker="o", lw=1.4, label=f"fold {fold}")
    if len(db):
        ax.set_xlim(db["step"].max() + 0.5, db["step"].min() - 0.5)
        ax.legend(fontsize=8)
    variant = str(db["variant"].iloc[0]) if len(db) else ""
    ax.set(xlabel="reverse-process step t", ylabel="Davies-Bouldin (lower: separated)",
           title=f"{variant}: class separation along the reverse process")
    _save(fig, path)


def plot_y_t_paths(states: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    """Paper Fig. 3's reverse trajectory of y_t in its own 2-D coordinates (class N0
    component, class N+ component): one path per test patient from y_T (circle) to y_0
    (cross), the mean over its samples, coloured by label; no embedding."""
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    states = np.asarray(states, float)  # (T + 1, N, 2), t = T..0
    for label, (colour, name) in LABEL_COLOURS.items():
        idx = np.flatnonzero(np.asarray(labels) == label)
        for n, i in enumerate(idx):
            ax.plot(states[:, i, 0], states[:, i, 1], color=colour, lw=0.6, alpha=0.45,
                    label=name if n == 0 else None)
        if len(idx):
            ax.scatter(states[0, idx, 0], states[0, idx, 1], color=colour, marker="o",
                       s=10, alpha=0.6)
            ax.scatter(states[-1, idx, 0], states[-1, idx, 1], color=colour, marker="x",
                       s=18)
    ax.scatter([0, 1], [1, 0], color="black", marker="*", s=60, zorder=4,
               label="one-hot targets")
    ax.set(xlabel="y_t, class N0 component", ylabel="y_t, class N+ component",
           title=f"{title}: y_t from T (o) to 0 (x)")
    ax.legend(fontsize=8)
    _save(fig, path)
