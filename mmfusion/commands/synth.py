"""`mmfusion synth`: write the synthetic demo cohort."""

from __future__ import annotations

import argparse
import os

_OPTIONS = (
    ("--n-patients", int, "number of patients"),
    ("--seed", int, "random seed (same seed: byte-identical cohort)"),
    ("--prevalence", float, "target fraction of LNM-positive patients"),
    ("--matrix", int, "in-plane matrix (512 supported)"),
    ("--n-slices", int, "CT slices per patient"),
    ("--pixel-spacing", float, "in-plane spacing in mm"),
    ("--slice-thickness", float, "slice spacing in mm"),
)


def _key(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="generate the synthetic demo cohort (DICOM-RT + tables)",
        description="Write a synthetic oesophageal-cancer cohort laid out as a hospital "
                    "export: DIR/dicom/<patient>/ (CT + RTSTRUCT), clinical.csv, "
                    "hematology.csv and truth.csv (evaluation only).")
    p.add_argument("--out", required=True, help="output folder")
    # No defaults here: an omitted option takes the config schema's `synth` default, as an
    # omitted key does in the workflow.
    for option, kind, what in _OPTIONS:
        p.add_argument(option, type=kind, default=None,
                       help=f"{what} (default: synth.{_key(option)} of the config schema)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="patients written in parallel (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):  # -> SynthSettings (heavy import)
    """The options given on the command line; the rest from the schema's `synth` defaults."""
    from mmfusion.errors import ConfigError
    from mmfusion.synth import SynthSettings

    given = {_key(o): getattr(args, _key(o)) for o, _, _ in _OPTIONS}
    try:
        return SynthSettings(**{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise ConfigError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    from mmfusion.synth import generate_cohort

    manifest = generate_cohort(args.out, settings_from_args(args), jobs=max(1, args.jobs),
                               progress=not args.no_progress)
    print(f"cohort written: {manifest.parent}")
    return 0
