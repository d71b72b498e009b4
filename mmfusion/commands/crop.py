"""`mmfusion crop`: tumour and node patches (+ QC picture) of one converted patient."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "crop",
        help="cut tumour/node patches of one converted patient (patches.npz, qc.png)",
        description="Reads ct/gtv_t/gtv_n NIfTIs from PATIENT_DIR (the convert output) and "
        "writes PATIENT_DIR/patches.npz and PATIENT_DIR/qc.png.",
    )
    p.add_argument("patient_dir",
                   help="folder {results}/patients/{patient}, or its convert_status.json")
    p.add_argument("--settings", default="{}",
                   help="the `crop` config section as JSON (omitted keys: reference sizes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.cohort.status import patient_folder, require_converted
    from mmfusion.crop import CropSettings, run_crop
    from mmfusion.settings import parse_settings_json

    settings = CropSettings.from_config(parse_settings_json(args.settings, "--settings"))
    args.patient_dir = patient_folder(args.patient_dir)
    require_converted(args.patient_dir)
    patches = run_crop(args.patient_dir, settings)
    print(f"{args.patient_dir}: tumour {patches.tumour.shape}, "
          f"nodes present {patches.node_present.tolist()}")
    return 0
