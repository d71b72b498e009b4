"""`mmfusion synth`: write the synthetic demo cohort."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="generate the synthetic demo cohort (DICOM-RT + tables)",
        description="Write a synthetic oesophageal-cancer cohort laid out as a hospital "
                    "export: DIR/dicom/<patient>/ (CT + RTSTRUCT), clinical.csv, "
                    "hematology.csv and truth.csv (evaluation only).")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-patients", type=int, default=60)
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--prevalence", type=float, default=0.4,
                   help="target fraction of LNM-positive patients (default 0.4)")
    p.add_argument("--matrix", type=int, default=128, help="in-plane matrix (512 supported)")
    p.add_argument("--n-slices", type=int, default=48)
    p.add_argument("--pixel-spacing", type=float, default=2.6, help="mm")
    p.add_argument("--slice-thickness", type=float, default=5.0, help="mm")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="patients written in parallel (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.errors import ConfigError
    from mmfusion.synth import SynthSettings, generate_cohort

    try:
        settings = SynthSettings(
            n_patients=args.n_patients, seed=args.seed, prevalence=args.prevalence,
            matrix=args.matrix, n_slices=args.n_slices, pixel_spacing=args.pixel_spacing,
            slice_thickness=args.slice_thickness)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    manifest = generate_cohort(args.out, settings, jobs=max(1, args.jobs),
                               progress=not args.no_progress)
    print(f"cohort written: {manifest.parent}")
    return 0
