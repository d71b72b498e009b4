"""`mmfusion radiomics`: PyRadiomics features of GTV-T and GTV-N of one converted patient."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "radiomics",
        help="PyRadiomics features of one converted patient (radiomics.tsv)",
        description="Reads ct/gtv_t/gtv_n NIfTIs from PATIENT_DIR and writes "
        "PATIENT_DIR/radiomics.tsv (one row) and PATIENT_DIR/radiomics_provenance.json.",
    )
    p.add_argument("patient_dir",
                   help="folder {results}/patients/{patient}, or its convert_status.json")
    p.add_argument("--settings", default="{}",
                   help="the `radiomics` config section as JSON (defaults: shipped params)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.cohort.status import patient_folder, require_converted
    from mmfusion.radiomics import RadiomicsSettings, run_radiomics
    from mmfusion.settings import parse_settings_json

    settings = RadiomicsSettings.from_config(parse_settings_json(args.settings, "--settings"))
    args.patient_dir = patient_folder(args.patient_dir)
    require_converted(args.patient_dir)
    row = run_radiomics(args.patient_dir, settings)
    print(f"{args.patient_dir}: {len(row) - 1} columns, gtvn_present={row['gtvn_present']}")
    return 0
