"""`mmfusion report`: cross-fold comparison of every variant (tables, tests, figures, model
card); `mmfusion report-trajectory`: paper Fig. 3, the diffusion's reverse trajectory."""

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
    _register_trajectory(subparsers)


def _register_trajectory(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report-trajectory", help="paper Fig. 3: t-SNE of the diffusion's reverse "
                                  "trajectory per fold, Davies-Bouldin per step",
        description="For each fold model of each diffusion variant (models/{variant}/"
                    "fold{k}: model.pt, scoring.json, preprocessor.json) runs the CFD "
                    "reverse process of the fold's test patients (seeded) and writes "
                    "fig3_davies_bouldin.csv (one row per variant x fold x step), "
                    "fig3/{variant}_fold{k}.png (t-SNE per step), "
                    "fig3/{variant}_davies_bouldin.png, fig3/representations.csv and "
                    "fig3/info.json.")
    p.add_argument("--models-dir", required=True, help="results/models")
    p.add_argument("--variants", nargs="+", required=True,
                   help="diffusion variants: mmfusion and/or Table 3 ablations (mmfusion_*)")
    p.add_argument("--table", required=True, help="results/cohort/table.tsv")
    p.add_argument("--spec", required=True, help="results/cohort/feature_spec.json")
    p.add_argument("--folds", required=True, help="results/cohort/folds.tsv (every fold in it)")
    p.add_argument("--cache", required=True, help="patch cache folder (`train cache`)")
    p.add_argument("--out", required=True, help="output folder (results/report)")
    p.add_argument("--steps", type=int, default=6,
                   help="steps t shown, evenly spaced from T to 0, both included; T + 1 or "
                   "more: every step (default 6)")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | auto (default: train.device's default; the workflow "
                   "passes cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default: all cores)")
    p.set_defaults(func=run_trajectory)


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


def run_trajectory(args: argparse.Namespace) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from mmfusion.report.trajectory import TABLE, build_fig3

    db = build_fig3(args.models_dir, args.variants, args.table, args.spec, args.folds,
                    args.cache, args.out, n_steps=args.steps, device=args.device)
    print(f"report-trajectory: {len(db)} rows ({db['variant'].nunique()} variant(s), "
          f"{db['fold'].nunique()} fold(s), {db['step'].nunique()} steps) -> "
          f"{args.out}/{TABLE}")
    return 0
