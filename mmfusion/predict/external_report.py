"""External validation report of one bundle on a labelled second cohort.

From `mmfusion predict`'s `predictions.csv` (with `label`): AUC with its DeLong 95% CI,
the confusion matrix at the bundle's decision threshold (the `decision` column), Brier
score, logistic recalibration and equal-count calibration bins, the decision curve
(`mmfusion.report.calibration` / `decision` / `figures`), and, for a synthetic cohort
(`truth.csv`), the oracle AUC of the same patients. Without labels (or with one class)
the report says so and evaluates nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from mmfusion.io import atomic_path, write_text_atomic


def auc_delong(labels: np.ndarray, scores: np.ndarray, level: float = 0.95
               ) -> tuple[float, float, float]:
    """AUC and its DeLong confidence interval (DeLong et al. 1988; Sun & Xu 2014)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, float)
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return math.nan, math.nan, math.nan
    r_all = rankdata(np.concatenate([pos, neg]))
    v10 = (r_all[:m] - rankdata(pos)) / n
    v01 = 1.0 - (r_all[m:] - rankdata(neg)) / m
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(var)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def _confusion(y: np.ndarray, decision: np.ndarray) -> dict[str, float]:
    tp = int(((decision == 1) & (y == 1)).sum())
    fp = int(((decision == 1) & (y == 0)).sum())
    tn = int(((decision == 0) & (y == 0)).sum())
    fn = int(((decision == 0) & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn), "accuracy": ratio(tp + tn, len(y))}


def _f(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _summary(m: dict[str, Any]) -> str:
    lines = [f"# External validation: `{m['variant']}`", "",
             f"{m['n']} patients with a label ({m['events']} positive); scored by the "
             "bundle's fold ensemble (mean probability, decision at the mean of the folds' "
             "thresholds).", "",
             "| metric | value |", "|---|---|",
             f"| AUC (DeLong 95% CI) | {_f(m['auc'])} ({_f(m['auc_ci'][0])}–"
             f"{_f(m['auc_ci'][1])}) |"]
    if m.get("oracle_auc") is not None:
        lines.append(f"| oracle AUC, same patients (truth.csv) | {_f(m['oracle_auc'])} |")
        lines.append(f"| AUC / oracle AUC | {_f(m['auc_over_oracle'])} |")
    c = m["confusion"]
    lines += [f"| sensitivity / specificity at {m['threshold_note']} | "
              f"{_f(c['sensitivity'])} / {_f(c['specificity'])} |",
              f"| PPV / NPV | {_f(c['ppv'])} / {_f(c['npv'])} |",
              f"| accuracy | {_f(c['accuracy'])} |",
              f"| Brier score | {_f(m['brier'])} |",
              f"| calibration slope / intercept | {_f(m['calibration']['slope'])} / "
              f"{_f(m['calibration']['intercept'])} |",
              f"| calibration-in-the-large | "
              f"{_f(m['calibration']['calibration_in_the_large'])} |", "",
              "Files: `metrics.json`, `calibration_bins.csv`, `decision_curve.csv`, "
              "`figures/roc.png`, `figures/calibration.png`, `figures/decision_curve.png` "
              "(the figures' titles come from the cross-validation report; here they show "
              "this external cohort).", ""]
    return "\n".join(lines)


def external_report(predictions_csv: str | Path, out_dir: str | Path, variant: str,
                    truth_csv: str | Path | None = None) -> dict[str, Any]:
    """Write the report into `out_dir`; returns the metrics (`evaluated` false without
    labels of both classes)."""
    from mmfusion.report.calibration import calibration_bins, recalibrate
    from mmfusion.report.decision import decision_curves
    from mmfusion.report.figures import plot_calibration, plot_decision_curves, plot_roc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = pd.read_csv(predictions_csv, dtype={"patient_id": str})
    labelled = pred.dropna(subset=["label"]) if "label" in pred else pred.iloc[:0]
    if labelled.empty or labelled["label"].nunique() < 2:
        why = ("the clinical table has no label column" if "label" not in pred
               else "fewer than two classes among the labelled patients")
        metrics: dict[str, Any] = {"variant": variant, "evaluated": False, "reason": why,
                                   "n_scored": len(pred)}
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        write_text_atomic(out / "summary.md", f"# External validation: `{variant}`\n\n"
                          f"Nothing evaluated: {why} ({len(pred)} patients scored).\n")
        return metrics
    y = labelled["label"].to_numpy().astype(int)
    p = labelled["probability"].to_numpy(float)
    auc, lo, hi = auc_delong(y, p)
    fit = recalibrate(y, p)
    metrics = {"variant": variant, "evaluated": True, "n": len(y), "events": int(y.sum()),
               "auc": auc, "auc_ci": [lo, hi], "brier": float(np.mean((p - y) ** 2)),
               "confusion": _confusion(y, labelled["decision"].to_numpy().astype(int)),
               "threshold_note": "the bundle's decision threshold",
               "calibration": {"slope": fit.slope, "intercept": fit.intercept,
                               "calibration_in_the_large": fit.calibration_in_the_large}}
    if truth_csv:
        truth = pd.read_csv(truth_csv, dtype={"patient_id": str})
        both = labelled.merge(truth[["patient_id", "probability"]], on="patient_id",
                              suffixes=("", "_oracle"))
        if len(both) == len(labelled):
            oracle = auc_delong(y, both["probability_oracle"].to_numpy(float))[0]
            metrics.update(oracle_auc=oracle, auc_over_oracle=auc / oracle)
    frame = labelled.assign(variant=variant, fold=0)
    with atomic_path(out / "calibration_bins.csv") as tmp:
        calibration_bins(y, p).to_csv(tmp, index=False)
    curves = decision_curves(frame, [variant])
    with atomic_path(out / "decision_curve.csv") as tmp:
        curves.to_csv(tmp, index=False)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    plot_roc(frame, [variant], figures / "roc.png")
    plot_calibration(frame, [variant], figures / "calibration.png")
    plot_decision_curves(curves, [variant], figures / "decision_curve.png")
    safe = json.loads(json.dumps(metrics, default=float).replace("NaN", "null"))
    write_text_atomic(out / "metrics.json", json.dumps(safe, indent=1) + "\n")
    write_text_atomic(out / "summary.md", _summary(metrics))
    return metrics
