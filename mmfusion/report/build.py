"""Write the report folder: tables, paired tests, figures and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmfusion.io import atomic_path, write_text_atomic
from mmfusion.report import figures
from mmfusion.report.summary import (
    METRIC_COLUMNS,
    collect_metrics,
    collect_predictions,
    find_outputs,
    oracle_by_fold,
    paired_tests,
    pooled_auc,
    variant_table,
)


def build_report_from_dir(models_dir: str | Path, out: str | Path, **kwargs: object) -> str:
    """`build_report` over every `models_dir/{variant}/fold{k}/` found."""
    return build_report(find_outputs(models_dir, "metrics.json"),
                        find_outputs(models_dir, "predictions.csv"), out, **kwargs)


def _csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


def _markdown(variants: pd.DataFrame, tests: pd.DataFrame, oracle: pd.DataFrame | None) -> str:
    lines = ["# MMFusion cross-fold report", "",
             "Test folds scored once; checkpoints and thresholds were chosen on each fold's "
             "validation split. Mean ± sd over folds.", "",
             "| variant | folds | " + " | ".join(METRIC_COLUMNS) + " |",
             "|---|---|" + "---|" * len(METRIC_COLUMNS)]
    for _, r in variants.iterrows():
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_sd']:.3f}" for m in METRIC_COLUMNS]
        lines.append(f"| {r['variant']} | {r['n_folds']} | " + " | ".join(cells) + " |")
    if oracle is not None and len(oracle):
        lines += ["", f"Oracle AUC (true probabilities, demo cohort) on the same test folds: "
                      f"{oracle['auc'].mean():.3f} ± {oracle['auc'].std(ddof=1):.3f}"]
    if len(tests):
        lines += ["", "Paired DeLong tests within each test fold, combined over folds (AUCs are "
                      "means over folds; variance of the mean difference = sum of the folds' "
                      "DeLong variances / K^2):", "",
                  "| reference | other | n | AUC ref | AUC other | diff | p |",
                  "|---|---|---|---|---|---|---|"]
        for _, t in tests.iterrows():
            lines.append(f"| {t['reference']} | {t['other']} | {t['n']} | "
                         f"{t['auc_reference']:.3f} | {t['auc_other']:.3f} | "
                         f"{t['difference']:+.3f} | {t['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def _config_markdown(config_text: str) -> str:
    """The settings a reader of the summary asks about first, from the resolved config."""
    import yaml

    c = yaml.safe_load(config_text) or {}
    cohort, model, train = c.get("cohort", {}), c.get("model", {}), c.get("train", {})
    crop, folds = c.get("crop", {}), c.get("folds", {})
    source = ("synthetic demo cohort" if cohort.get("synthetic")
              else f"label `{cohort.get('label_column')}` (positive: "
                   f"{cohort.get('positive_value')}), IDs in `{cohort.get('id_column')}`")
    rows = [
        ("cohort", source),
        ("folds", f"{folds.get('n_folds')} (validation share {folds.get('val_fraction')}, "
                  f"seed {folds.get('seed')})"),
        ("variants", ", ".join(model.get("variants", []))),
        ("backbone", f"ResNet-{model.get('depth')}, width {model.get('base_width')}, "
                     f"pretrained: {'yes' if model.get('pretrained') else 'no'}"),
        ("patches", f"tumour {crop.get('tumour_size')}, nodes {crop.get('node_sizes')} "
                    f"at {crop.get('spacing')} mm"),
        ("training", f"{train.get('epochs')} epochs, batch {train.get('batch_size')}, "
                     f"lr {train.get('lr')}, seed {train.get('seed')}"),
    ]
    return "\n".join(["", "## Configuration", "",
                      "Every setting is in `config.resolved.yaml` beside this file (the config "
                      "file given plus the schema's defaults for every key it left out).", "",
                      "| setting | value |", "|---|---|",
                      *[f"| {k} | {v} |" for k, v in rows]]) + "\n"


def build_report(metrics_files: list[str | Path], prediction_files: list[str | Path],
                 out: str | Path, reference: str = "mmfusion",
                 truth_csv: str | Path | None = None,
                 config_yaml: str | Path | None = None) -> str:
    """Write every report file under `out`; returns the Markdown summary. `config_yaml`
    (the run's resolved config) is copied beside it and summarised in it."""
    out = Path(out)
    metrics = collect_metrics(metrics_files)
    predictions = collect_predictions(prediction_files)
    order = [str(v) for v in metrics["variant"].cat.categories]
    variants = variant_table(metrics)
    tests = paired_tests(predictions, reference)
    oracle = oracle_by_fold(predictions, truth_csv) if truth_csv else None

    _csv(metrics, out / "metrics_summary.csv")
    _csv(variants, out / "variants.csv")
    _csv(pooled_auc(predictions), out / "pooled_auc.csv")
    _csv(tests, out / "paired_tests.csv")
    if oracle is not None:
        _csv(oracle, out / "oracle_auc.csv")
    figures.plot_roc(predictions, order, out / "figures" / "roc.png")
    figures.plot_calibration(predictions, order, out / "figures" / "calibration.png")
    figures.plot_auc_by_fold(metrics, oracle, order, out / "figures" / "auc_by_fold.png")
    summary = _markdown(variants, tests, oracle)
    if config_yaml is not None:
        config_text = Path(config_yaml).read_text()
        write_text_atomic(out / "config.resolved.yaml", config_text)
        summary += _config_markdown(config_text)
    write_text_atomic(out / "summary.md", summary)
    return summary
