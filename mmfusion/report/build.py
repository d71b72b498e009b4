"""Write the report folder: tables, paired tests, calibration, decision curves, confusion
matrices, figures, a Markdown summary, the HTML front page's fragment and the model card;
`table3.csv` (paper Table 3 shape) only when a Table 3 ablation variant was trained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmfusion.io import atomic_path, write_text_atomic
from mmfusion.report import figures
from mmfusion.report.calibration import calibration_table
from mmfusion.report.cohort_facts import cohort_counts, exclusion_counts, fold_sizes
from mmfusion.report.decision import decision_curves
from mmfusion.report.markdown import (
    Results,
    config_markdown,
    front_page_rst,
    summary_markdown,
)
from mmfusion.report.model_card import CardInputs, model_card
from mmfusion.report.repeated_cv import (
    corrected_tests,
    member_metrics,
    repeated_cv_table,
)
from mmfusion.report.summary import (
    METRIC_COLUMNS,
    MONTE_CARLO_COLUMNS,
    collect_metrics,
    collect_predictions,
    find_outputs,
    monte_carlo_table,
    oracle_by_fold,
    paired_tests,
    pooled_auc,
    variant_table,
)
from mmfusion.report.table3 import has_table3, table3_frame
from mmfusion.report.thresholds import (
    SUFFIX,
    THRESHOLD_METRICS,
    confusion_table,
    fold_threshold_table,
)

# Every figure build_report writes, under figures/.
FIGURES = ("roc.png", "calibration.png", "auc_by_fold.png", "decision_curve.png",
           "confusion_matrices.png")


@dataclass(frozen=True)
class CohortFiles:
    """The cohort stage's files the model card and the front page read (each optional)."""

    table: str | Path | None = None
    folds: str | Path | None = None
    spec: str | Path | None = None
    exclusions: str | Path | None = None


def build_report_from_dir(models_dir: str | Path, out: str | Path, **kwargs: object) -> str:
    """`build_report` over every `models_dir/{variant}/fold{k}/` found."""
    return build_report(find_outputs(models_dir, "metrics.json"),
                        find_outputs(models_dir, "predictions.csv"), out, **kwargs)


def _csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")


def _metrics_summary(metrics: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """metrics_summary.csv: metrics.json's test metrics and choices, then the confusion
    counts at the chosen threshold and every threshold metric (and count) at 0.5, both
    recomputed from predictions.csv."""
    extra = fold_threshold_table(predictions, metrics[["variant", "fold", "threshold"]]
                                 .astype({"variant": str}))
    merged = metrics.astype({"variant": str}).merge(extra, on=["variant", "fold"], how="left")
    merged["variant"] = pd.Categorical(merged["variant"], metrics["variant"].cat.categories,
                                       ordered=True)
    last = [c for c in MONTE_CARLO_COLUMNS if c in merged]  # new columns go last
    return merged[[c for c in merged if c not in last] + last]


def _fold_repeats(folds_tsv: str | Path | None) -> dict[int, int]:
    """Fold -> repeat from folds.tsv (`repeat` column of a repeated CV); {} = all 0."""
    if folds_tsv is None:
        return {}
    folds = pd.read_csv(folds_tsv, sep="\t", dtype={"patient_id": str})
    if "repeat" not in folds:
        return {}
    pairs = folds[["fold", "repeat"]].drop_duplicates()
    return dict(zip(pairs["fold"].astype(int), pairs["repeat"].astype(int), strict=True))


def _set_sizes(folds: pd.DataFrame | None, metrics: pd.DataFrame, n_folds: int
               ) -> tuple[float, float]:
    """(n_train, n_test) of one fold for the corrected t-test: training = train + val
    patients (both shape the model), mean over folds; without folds.tsv, the test size
    from metrics and n_train = (K - 1) n_test."""
    if folds is not None and len(folds):
        return (float((folds["train_n"] + folds["val_n"]).mean()),
                float(folds["test_n"].mean()))
    n_test = float(pd.to_numeric(metrics["n"], errors="coerce").mean())
    return max(n_folds - 1, 1) * n_test, n_test


def build_report(metrics_files: list[str | Path], prediction_files: list[str | Path],
                 out: str | Path, reference: str = "mmfusion",
                 truth_csv: str | Path | None = None,
                 config_yaml: str | Path | None = None,
                 cohort_files: CohortFiles | None = None) -> str:
    """Write every report file under `out`; returns the Markdown summary. `config_yaml`
    (the run's resolved config) is copied beside it and summarised in it; `cohort_files`
    feed the model card and the cohort section.

    Repeated CV (folds.tsv with a `repeat` column): the per-fold tables (metrics_summary,
    variants.csv mean ± sd, auc_by_fold) and repeated_cv.csv cover every repeat x fold;
    everything that pools or pairs patients (DeLong, the t-test over folds, pooled AUC,
    ROC, calibration, decision curves, confusion matrices, oracle, Table 3) uses repeat 0,
    the folds of a run without repeats, where every patient is tested once."""
    import yaml

    out = Path(out)
    cohort_files = cohort_files or CohortFiles()
    repeats = _fold_repeats(cohort_files.folds)
    all_predictions = collect_predictions(prediction_files)
    all_metrics = _metrics_summary(collect_metrics(metrics_files), all_predictions)
    def first(df: pd.DataFrame) -> pd.DataFrame:  # repeat 0's rows
        return df[df["fold"].map(lambda k: repeats.get(int(k), 0)) == 0].reset_index(drop=True)

    predictions, metrics = first(all_predictions), first(all_metrics)
    order = [str(v) for v in all_metrics["variant"].cat.categories]
    variants = variant_table(all_metrics, METRIC_COLUMNS + [f"{m}{SUFFIX}"
                                                            for m in THRESHOLD_METRICS])
    tests = paired_tests(predictions, reference, metrics)
    with_repeat = all_metrics.assign(repeat=all_metrics["fold"].map(
        lambda k: repeats.get(int(k), 0)))
    models = member_metrics(metrics_files, repeats)
    folds_table = (fold_sizes(cohort_files.table, cohort_files.folds)
                   if cohort_files.table and cohort_files.folds else None)
    n_train, n_test = _set_sizes(folds_table, metrics, int(metrics["fold"].nunique()))
    corrected = corrected_tests(with_repeat, models, reference,
                                [v for v in order if v != reference], n_train, n_test)
    tests = tests.merge(corrected, on=["reference", "other"], how="left") if len(tests) \
        else tests
    repeated = repeated_cv_table(with_repeat, models, order)
    oracle = oracle_by_fold(predictions, truth_csv) if truth_csv else None
    calibration = calibration_table(predictions, order)
    curves = decision_curves(predictions, order)
    confusion = confusion_table(metrics.astype({"variant": str}), order)
    config_text = Path(config_yaml).read_text() if config_yaml is not None else None
    config = (yaml.safe_load(config_text) or {}) if config_text is not None else {}
    table3 = table3_frame(metrics, predictions, config) if has_table3(order) else None

    c = cohort_files
    excl = exclusion_counts(c.exclusions) if c.exclusions else None
    results = Results(
        variants=variants, tests=tests, oracle=oracle, calibration=calibration,
        confusion=confusion, curves=curves,
        cohort=cohort_counts(c.table) if c.table else None,
        folds=folds_table,
        n_excluded=int(excl["n"].sum()) if excl is not None else None, table3=table3,
        monte_carlo=monte_carlo_table(all_metrics), repeated=repeated)

    # the repeat of each fold, after `fold`, when there are repeats
    summary_rows = (with_repeat[[*all_metrics.columns[:2], "repeat", *all_metrics.columns[2:]]]
                    if repeats else all_metrics)
    _csv(summary_rows, out / "metrics_summary.csv")
    _csv(repeated, out / "repeated_cv.csv")
    _csv(variants, out / "variants.csv")
    _csv(pooled_auc(predictions), out / "pooled_auc.csv")
    _csv(tests, out / "paired_tests.csv")
    _csv(calibration, out / "calibration.csv")
    _csv(curves, out / "decision_curve.csv")
    _csv(confusion, out / "confusion_matrices.csv")
    if oracle is not None:
        _csv(oracle, out / "oracle_auc.csv")
    if table3 is not None:
        _csv(table3, out / "table3.csv")
    fig_dir = out / "figures"
    figures.plot_roc(predictions, order, fig_dir / "roc.png")
    figures.plot_calibration(predictions, order, fig_dir / "calibration.png", calibration)
    figures.plot_auc_by_fold(all_metrics, oracle, order, fig_dir / "auc_by_fold.png")
    figures.plot_decision_curves(curves, order, fig_dir / "decision_curve.png")
    figures.plot_confusion(confusion, order, fig_dir / "confusion_matrices.png")

    synthetic = bool(config.get("cohort", {}).get("synthetic"))
    summary = summary_markdown(results, synthetic=synthetic)
    if config_text is not None:
        write_text_atomic(out / "config.resolved.yaml", config_text)
        summary += config_markdown(config)
    write_text_atomic(out / "summary.md", summary)
    write_text_atomic(out / "front_page.rst", front_page_rst(results))
    spec = json.loads(Path(c.spec).read_text()) if c.spec else None
    card = CardInputs(config=config, metrics=all_metrics, spec=spec, exclusions=excl,
                      cohort=results.cohort, folds=results.folds, calibration=calibration,
                      tests=tests)
    write_text_atomic(out / "model_card.md", model_card(card))
    return summary
