"""`mmfusion crop`: tumour and node patches (+ QC picture) of one converted patient."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmfusion.commands._per_patient import register_per_patient


def crop(folder: Path, section: Mapping[str, Any]) -> str:
    from mmfusion.features.crop import run_crop
    from mmfusion.features.patches import CropSettings

    patches = run_crop(folder, CropSettings.from_config(section))
    return f"tumour {patches.tumour.shape}, nodes present {patches.node_present.tolist()}"


def register(subparsers: argparse._SubParsersAction) -> None:
    register_per_patient(
        subparsers, "crop",
        help="cut tumour/node patches of one converted patient (patches.npz, qc.png)",
        description="Reads ct/gtv_t/gtv_n NIfTIs from PATIENT_DIR (the convert output) and "
        "writes PATIENT_DIR/patches.npz and PATIENT_DIR/qc.png.",
        section="crop", stage=crop)
