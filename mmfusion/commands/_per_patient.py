"""The skeleton every per-patient features command shares (`mmfusion crop`, `radiomics`):
a converted patient folder in, the stage's config section as JSON, one summary line out."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# (patient folder, config section) -> one-line summary of what was written
PatientStage = Callable[[Path, Mapping[str, Any]], str]


def register_per_patient(subparsers: argparse._SubParsersAction, name: str, *, help: str,
                         description: str, section: str, stage: PatientStage) -> None:
    """Add subcommand `name`: `PATIENT_DIR [--settings JSON]` running `stage` on a patient
    folder whose conversion succeeded."""
    p = subparsers.add_parser(name, help=help, description=description)
    p.add_argument("patient_dir",
                   help="folder {results}/patients/{patient}, or its convert_status.json")
    p.add_argument("--settings", default="{}",
                   help=f"the `{section}` config section as JSON (omitted keys take the "
                   "config schema's defaults, as in the workflow)")
    p.set_defaults(func=functools.partial(_run_on_patient, stage))


def _run_on_patient(stage: PatientStage, args: argparse.Namespace) -> int:
    from mmfusion.cohort.status import patient_folder, require_converted
    from mmfusion.settings import parse_settings_json

    section = parse_settings_json(args.settings, "--settings")
    folder = patient_folder(args.patient_dir)
    require_converted(folder)
    print(f"{folder}: {stage(folder, section)}")
    return 0
