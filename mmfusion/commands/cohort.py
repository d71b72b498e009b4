"""`mmfusion cohort build|folds`: the merged cohort table, QC exclusions and folds."""

from __future__ import annotations

import argparse

from mmfusion.settings import parse_settings_json as section_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cohort", help="merge tables + radiomics (build); make folds",
                              description="Cohort stage: `build` merges the clinical and "
                              "hematology tables with radiomics rows and conversion statuses; "
                              "`folds` writes the stratified patient-level folds.")
    sub = p.add_subparsers(dest="cohort_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="table.tsv, feature_spec.json and qc/exclusions.tsv")
    b.add_argument("--clinical", required=True, help="clinical table (CSV/TSV)")
    b.add_argument("--hematology", help="hematology table (CSV/TSV); omit when there is none")
    b.add_argument("--status", nargs="*", default=[],
                   help="every patient's convert_status.json (radiomics.tsv is read beside it)")
    b.add_argument("--index", help="dicom_index.tsv: list patients without CT+RTSTRUCT too")
    b.add_argument("--cohort-settings", default="{}",
                   help="the `cohort` config section as JSON (id/label columns, positive_value)")
    b.add_argument("--tables-settings", default="{}",
                   help="the `tables` config section as JSON (column declarations)")
    b.add_argument("--table", required=True, help="output table.tsv")
    b.add_argument("--spec", required=True, help="output feature_spec.json")
    b.add_argument("--exclusions", required=True, help="output qc/exclusions.tsv")
    b.set_defaults(func=run_build)

    f = sub.add_parser("folds", help="folds.tsv (patient_id, fold, split)")
    f.add_argument("--table", required=True, help="cohort table.tsv")
    f.add_argument("--settings", default="{}", help="the `folds` config section as JSON")
    f.add_argument("--out", required=True, help="output folds.tsv")
    f.set_defaults(func=run_folds)




def _unlinked(index_tsv: str | None) -> list[str]:
    if not index_tsv:
        return []
    from mmfusion.dicom.index import patients_from_index, read_index

    linked = set(patients_from_index(index_tsv))
    return sorted({r["patient"] for r in read_index(index_tsv) if r.get("patient")} - linked)


def run_build(args: argparse.Namespace) -> int:
    from mmfusion.cohort.merge import build_cohort
    from mmfusion.cohort.tables import TableSettings

    settings = TableSettings.from_config(section_json(args.cohort_settings, "--cohort-settings"),
                                         section_json(args.tables_settings, "--tables-settings"))
    cohort = build_cohort(args.clinical, args.hematology, args.status, settings,
                          unlinked_patients=_unlinked(args.index))
    cohort.write(args.table, args.spec, args.exclusions)
    print(f"cohort: {cohort.spec['n_patients']} patients ({cohort.spec['n_positive']} positive), "
          f"{len(cohort.exclusions)} excluded")
    return 0


def run_folds(args: argparse.Namespace) -> int:
    import pandas as pd

    from mmfusion.cohort.folds import FoldSettings, make_folds, write_folds

    settings = FoldSettings.from_config(section_json(args.settings, "--settings"))
    table = pd.read_csv(args.table, sep="\t", dtype={"patient_id": str},
                        usecols=["patient_id", "label"])
    folds = make_folds(table["patient_id"].tolist(), table["label"].to_numpy(), settings)
    write_folds(folds, args.out)
    print(f"folds: {settings.n_folds} folds over {len(table)} patients -> {args.out}")
    return 0
