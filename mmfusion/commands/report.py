"""`mmfusion report`: cross-fold comparison of every variant (tables, tests, figures, model
card). Paper Fig. 3 is `mmfusion trajectory` (mmfusion/commands/trajectory.py)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="summarise every variant over the folds (tables, tests, plots, "
                       "model card)",
        description="Reads models/{variant}/fold{k}/metrics.json and predictions.csv and "
                    "writes metrics_summary.csv (per fold, at the validation-chosen threshold "
                    "and at 0.5), variants.csv (mean ± sd, paper Table 2 shape), "
                    "pooled_auc.csv, paired_tests.csv (fold-stratified DeLong and paired "
                    "t-test over folds), calibration.csv, decision_curve.csv, "
                    "confusion_matrices.csv, summary.md, front_page.rst, model_card.md and "
                    "figures/.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--models-dir", help="results/models: take every variant and fold found")
    src.add_argument("--metrics", nargs="+", help="metrics.json files (with --predictions)")
    p.add_argument("--predictions", nargs="+", default=[], help="predictions.csv files")
    p.add_argument("--out", required=True, help="output folder (results/report)")
    p.add_argument("--reference", default="mmfusion",
                   help="variant tested against every other (default mmfusion)")
    p.add_argument("--truth", default=None,
                   help="demo only: truth.csv of the synthetic cohort, adds the oracle AUC")
    p.add_argument("--config", default=None,
                   help="the run's config.resolved.yaml: copied into the report folder and "
                   "summarised in summary.md and model_card.md")
    cohort = p.add_argument_group("cohort files (model card and cohort section; optional)")
    cohort.add_argument("--table", default=None, help="results/cohort/table.tsv")
    cohort.add_argument("--folds", default=None, help="results/cohort/folds.tsv")
    cohort.add_argument("--spec", default=None, help="results/cohort/feature_spec.json")
    cohort.add_argument("--exclusions", default=None, help="results/qc/exclusions.tsv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.report.build import CohortFiles, build_report, build_report_from_dir

    options = dict(reference=args.reference, truth_csv=args.truth, config_yaml=args.config,
                   cohort_files=CohortFiles(table=args.table, folds=args.folds, spec=args.spec,
                                            exclusions=args.exclusions))
    if args.models_dir:
        summary = build_report_from_dir(args.models_dir, args.out, **options)
    else:
        summary = build_report(args.metrics, args.predictions, args.out, **options)
    print(summary)
    return 0
