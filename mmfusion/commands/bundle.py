"""`mmfusion bundle build|verify|report`: model bundles and their external validation."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bundle", help="assemble / verify a trained model bundle; external validation report",
        description="`build` assembles results/bundle/VARIANT from the trained folds "
                    "(weights, fitted preprocessors, thresholds, temperatures), the resolved "
                    "config, the feature spec and the stages' settings, with a sha256 "
                    "manifest; `verify` checks a bundle's checksums; `report` evaluates "
                    "`mmfusion predict` output on a labelled external cohort.")
    sub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="assemble a bundle from results/models/VARIANT")
    b.add_argument("--variant", required=True)
    b.add_argument("--models", required=True, help="results/models/VARIANT (fold0, fold1, ...)")
    b.add_argument("--config", required=True, help="results/config.resolved.yaml")
    b.add_argument("--spec", required=True, help="results/cohort/feature_spec.json")
    b.add_argument("--radiomics-params", help="the PyRadiomics params YAML the run used "
                   "(default: radiomics.params of the config, else the shipped one)")
    b.add_argument("--out", required=True, help="bundle folder (results/bundle/VARIANT)")
    b.set_defaults(func=run_build)

    v = sub.add_parser("verify", help="check a bundle's files against its manifest")
    v.add_argument("bundle", help="bundle folder")
    v.set_defaults(func=run_verify)

    r = sub.add_parser("report", help="external validation report of predictions.csv")
    r.add_argument("--predictions", required=True, help="predictions.csv of mmfusion predict")
    r.add_argument("--variant", required=True, help="the bundle's variant (for titles)")
    r.add_argument("--truth", help="synthetic cohorts only: truth.csv (adds the oracle AUC)")
    r.add_argument("--out", required=True, help="report folder")
    r.set_defaults(func=run_report)


def run_build(args: argparse.Namespace) -> int:
    from mmfusion.predict.bundle import build_bundle

    out = build_bundle(args.variant, args.models, args.config, args.spec, args.out,
                       radiomics_params=args.radiomics_params)
    print(f"bundle {args.variant}: {out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from mmfusion.predict.manifest import verify_manifest

    manifest = verify_manifest(args.bundle)
    print(f"bundle {manifest.get('variant')}: {len(manifest['files'])} files match the "
          "manifest")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from mmfusion.predict.external_report import external_report

    m = external_report(args.predictions, args.out, args.variant, truth_csv=args.truth)
    if m["evaluated"]:
        lo, hi = m["auc_ci"]
        print(f"external {args.variant}: AUC {m['auc']:.3f} ({lo:.3f}-{hi:.3f}), "
              f"n={m['n']}")
    else:
        print(f"external {args.variant}: not evaluated ({m['reason']})")
    return 0
