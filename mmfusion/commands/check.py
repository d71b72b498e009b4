"""`mmfusion check`: the preflight of the index against the tables and the config."""

from __future__ import annotations

import argparse

from mmfusion.settings import parse_settings_json as section_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check", help="preflight: cross the DICOM index with the tables and the config",
        description="Before any conversion: patients without images or table rows, missing "
                    "labels, ID collisions, table errors, ROI regexes that match nothing "
                    "(listing the names present), too few patients of a class for the folds. "
                    "Writes every finding to --report; exits 1 when any is an error.")
    p.add_argument("--index", required=True, help="dicom_index.tsv")
    p.add_argument("--manifest-index", help="manifest_index.tsv (patients of the manifest)")
    p.add_argument("--clinical", required=True, help="clinical table (CSV/TSV)")
    p.add_argument("--hematology", help="hematology table (CSV/TSV); omit when there is none")
    p.add_argument("--cohort-settings", default="{}", help="the `cohort` config section as JSON")
    p.add_argument("--tables-settings", default="{}", help="the `tables` config section as JSON")
    p.add_argument("--rois-settings", default="{}", help="the `rois` config section as JSON")
    p.add_argument("--folds-settings", default="{}", help="the `folds` config section as JSON")
    p.add_argument("--report", required=True, help="output TSV: one row per finding")
    p.add_argument("--summary", help="output JSON: counts by severity and kind (written only "
                                     "when there is no error)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from mmfusion.cohort.folds import FoldSettings
    from mmfusion.cohort.preflight import (
        ERROR,
        PreflightInputs,
        findings_table,
        run_preflight,
        summary_lines,
    )
    from mmfusion.cohort.tables import TableSettings
    from mmfusion.dicom.convert import ConvertSettings
    from mmfusion.errors import MMFusionError
    from mmfusion.io import write_text_atomic

    tables = TableSettings.from_config(section_json(args.cohort_settings, "--cohort-settings"),
                                       section_json(args.tables_settings, "--tables-settings"))
    folds = FoldSettings.from_config(section_json(args.folds_settings, "--folds-settings"))
    rois = section_json(args.rois_settings, "--rois-settings")
    try:  # an invalid regex is a finding in the report, like any other error
        settings = ConvertSettings.from_config(rois, {})
        tumour, node = settings.tumour, settings.node
    except MMFusionError:
        from mmfusion.settings import section_defaults

        merged = {**section_defaults("rois"), **rois}
        tumour, node = str(merged["tumour"]), str(merged["node"])
    findings = run_preflight(PreflightInputs(
        index_tsv=args.index, clinical=args.clinical, hematology=args.hematology,
        tables=tables, tumour_regex=tumour, node_regex=node, n_folds=folds.n_folds,
        manifest_index=args.manifest_index))
    write_text_atomic(args.report, findings_table(findings).to_csv(sep="\t", index=False))
    for line in summary_lines(findings):
        print(line)
    errors = [f for f in findings if f.severity == ERROR]
    if errors:
        raise MMFusionError(f"preflight found {len(errors)} error(s), first: {errors[0].detail}",
                            path=args.report,
                            fix="fix the config or tables (every finding is in the report), "
                                "then run again")
    if args.summary:
        counts: dict[str, dict[str, int]] = {}
        for f in findings:
            counts.setdefault(f.severity, {}).setdefault(f.kind, 0)
            counts[f.severity][f.kind] += 1
        write_text_atomic(args.summary, json.dumps({"passed": True, "counts": counts},
                                                   indent=1) + "\n")
    print(f"preflight passed: {len(findings)} warning(s); report: {args.report}")
    return 0
