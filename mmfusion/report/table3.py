"""Paper Table 3 shape: MMFusion against its one-component ablations on the same folds.

Rows: `mmfusion` and every Table 3 variant present (`mmfusion.model.variants.TABLE3`:
GraphConv instead of GAT, no relation masking, no node flags), plus any row added from
another results folder (the backbone-depth ablation: the same cohort and folds run with
another `model.depth`, see `main`). Columns: what each row changes (CNN, GNN, MMRL, node
flags), test metrics as mean ± sd over folds at each fold's validation-chosen threshold
(AUC, accuracy, precision, sensitivity, specificity, F1; the same at 0.5 suffixed
`_at_0.5`), and the paired comparison with mmfusion on the same test patients: AUC
difference (row − mmfusion) with the fold-stratified DeLong z and p (`delong.py`, as in
paired_tests.csv), and the mean over folds of the per-fold differences of the threshold
metrics.

    python -m mmfusion.report.table3 results --add resnet18=results_r18 --out table3_depth.csv
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmfusion.errors import MMFusionError
from mmfusion.model.variants import ABLATION_OVERRIDES, TABLE3, TABLE3_REFERENCE
from mmfusion.report.summary import find_outputs, paired_tests
from mmfusion.report.thresholds import SUFFIX

REFERENCE = TABLE3_REFERENCE
# metrics_summary.csv column -> Table 3 column (recall is sensitivity)
METRICS = {"auc": "auc", "accuracy": "accuracy", "precision": "precision",
           "recall": "sensitivity", "specificity": "specificity", "f1": "f1"}
THRESHOLD_METRICS = [m for m in METRICS if m != "auc"]
DESCRIPTORS = ["cnn", "gnn", "mmrl", "node_flags"]


def has_table3(variants: Sequence[str]) -> bool:
    """Whether any Table 3 ablation is among `variants` (then table3.csv is written)."""
    return any(str(v) in TABLE3 for v in variants)


def describe(variant: str, config: Mapping[str, Any], cnn: str | None = None) -> dict[str, str]:
    """What a row is made of: backbone, graph layer, MMRL masking, node flags."""
    model = config.get("model", {})
    over = ABLATION_OVERRIDES.get(variant, {})
    flags = bool(over.get("node_flags", model.get("node_count", True)))
    return {"cnn": cnn or f"ResNet-{model.get('depth', '?')}",
            "gnn": "GCN" if over.get("graph_conv", "gat") == "gcn" else "GAT",
            "mmrl": "w/ mask" if over.get("relation_mask", True) else "w/o mask",
            "node_flags": "w/" if flags else "w/o"}


def _per_fold(metrics: pd.DataFrame, variant: str, column: str) -> pd.Series:
    rows = metrics[metrics["variant"].astype(str) == variant]
    return rows.set_index("fold")[column].astype(float)


def table3_frame(metrics: pd.DataFrame, predictions: pd.DataFrame,
                 config: Mapping[str, Any] | None = None,
                 cnn: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Table 3: one row per variant (mmfusion first, then the ablations present in
    `metrics`, in TABLE3 order, then any other rows named in `cnn`).

    Args:
        metrics: metrics_summary.csv rows (variant, fold, auc, accuracy, ..., `_at_0.5`).
        predictions: the test predictions of the same variants (patient_id, fold, variant,
            probability, label).
        config: the run's resolved config (depth, node_count), for the descriptors.
        cnn: variant -> backbone label for rows from another run (e.g. another depth).
    """
    config, cnn = config or {}, dict(cnn or {})
    present = [str(v) for v in pd.unique(metrics["variant"].astype(str))]
    order = [v for v in [REFERENCE, *TABLE3, *cnn] if v in present]
    order = list(dict.fromkeys(order))
    tests = paired_tests(predictions[predictions["variant"].astype(str).isin(order)],
                         REFERENCE).set_index("other")
    columns = [f"{m}{s}" for s in ("", SUFFIX) for m in THRESHOLD_METRICS]
    rows = []
    for variant in order:
        row: dict[str, Any] = {"variant": variant, "change": _change(variant, cnn),
                               **describe(variant, config, cnn.get(variant))}
        folds = metrics[metrics["variant"].astype(str) == variant]
        row["n_folds"] = int(folds["fold"].nunique())
        for col in ["auc", *columns]:
            if col not in folds:
                continue
            name = _name(col)
            values = folds[col].astype(float)
            row[f"{name}_mean"] = float(values.mean())
            row[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        if variant != REFERENCE and variant in tests.index:
            t = tests.loc[variant]
            row.update({"n_paired": int(t["n"]), "auc_difference": -float(t["difference"]),
                        "delong_z": -float(t["z"]), "delong_p": float(t["p_value"])})
        if variant != REFERENCE and REFERENCE in present:
            for col in columns:
                if col in metrics:
                    diff = (_per_fold(metrics, variant, col)
                            - _per_fold(metrics, REFERENCE, col)).dropna()
                    row[f"{_name(col)}_difference"] = (float(diff.mean()) if len(diff)
                                                       else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows, columns=_columns(columns, metrics))


def _change(variant: str, cnn: Mapping[str, str]) -> str:
    if variant == REFERENCE:
        return "reference"
    if variant in TABLE3:
        return TABLE3[variant][1]
    return f"backbone {cnn.get(variant, '?')}"


def _name(col: str) -> str:
    """metrics_summary column -> Table 3 name (recall -> sensitivity, suffix kept)."""
    base, suffix = (col[: -len(SUFFIX)], SUFFIX) if col.endswith(SUFFIX) else (col, "")
    return METRICS.get(base, base) + suffix


def _columns(columns: list[str], metrics: pd.DataFrame) -> list[str]:
    stats = [f"{_name(c)}_{s}" for c in ["auc", *columns] if c in metrics
             for s in ("mean", "sd")]
    diffs = [f"{_name(c)}_difference" for c in columns if c in metrics]
    return ["variant", "change", *DESCRIPTORS, "n_folds", *stats, "n_paired",
            "auc_difference", "delong_z", "delong_p", *diffs]


# ---- rows from another results folder (the backbone-depth ablation) ---------------------

def _load_run(results: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """metrics_summary.csv, all predictions and the resolved config of a finished run."""
    import yaml

    summary = results / "report" / "metrics_summary.csv"
    if not summary.is_file():
        raise MMFusionError("no report in this results folder", path=str(summary),
                            fix="run the workflow to the report first")
    preds = find_outputs(results / "models", "predictions.csv")
    config_file = results / "config.resolved.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    return (pd.read_csv(summary), pd.concat([pd.read_csv(p) for p in preds], ignore_index=True)
            if preds else pd.DataFrame(), config or {})


def _test_patients(predictions: pd.DataFrame) -> pd.DataFrame:
    p = predictions[predictions["variant"].astype(str) == REFERENCE]
    return (p[["fold", "patient_id", "label"]].astype({"patient_id": str})
            .sort_values(["fold", "patient_id"]).reset_index(drop=True))


def combine_runs(results: Path, added: Mapping[str, Path]
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, str]]:
    """The main run's metrics and predictions, plus each added run's mmfusion renamed to its
    label. The added runs must have tested the same patients in the same folds."""
    metrics, predictions, config = _load_run(results)
    base = _test_patients(predictions)
    cnn = {}
    for label, other in added.items():
        m, p, c = _load_run(other)
        if not _test_patients(p).equals(base):
            raise MMFusionError(f"run {label!r} did not test the same patients in the same "
                                f"folds as {results}", path=str(other),
                                fix="use the same cohort, folds.n_folds and folds.seed")
        metrics = pd.concat([metrics, m[m["variant"] == REFERENCE].assign(variant=label)])
        predictions = pd.concat([predictions, p[p["variant"] == REFERENCE]
                                 .assign(variant=label)])
        depth = c.get("model", {}).get("depth", "?")
        cnn[label] = f"ResNet-{depth}" + (" (pretrained)" if c.get("model", {})
                                          .get("pretrained") else "")
    return metrics.reset_index(drop=True), predictions.reset_index(drop=True), config, cnn


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mmfusion.report.table3",
        description="Table 3 of a finished run, with rows added from runs of the same cohort "
                    "and folds under other settings (e.g. another model.depth).")
    ap.add_argument("results", type=Path, help="the main results folder (with report/)")
    ap.add_argument("--add", action="append", default=[], metavar="LABEL=RESULTS",
                    help="add that run's mmfusion as row LABEL (repeatable)")
    ap.add_argument("--out", type=Path, required=True, help="CSV to write")
    args = ap.parse_args(argv)
    added = {}
    for item in args.add:
        label, sep, path = item.partition("=")
        if not sep or not label:
            ap.error(f"--add takes LABEL=RESULTS, got {item!r}")
        added[label] = Path(path)
    metrics, predictions, config, cnn = combine_runs(args.results, added)
    table = table3_frame(metrics, predictions, config, cnn)
    table.to_csv(args.out, index=False, float_format="%.6g", lineterminator="\n")
    with pd.option_context("display.width", 200, "display.max_columns", 12):
        print(table[["variant", *DESCRIPTORS, "auc_mean", "auc_sd", "auc_difference",
                     "delong_p"]].replace({np.nan: None}).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
