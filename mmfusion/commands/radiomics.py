"""`mmfusion radiomics`: PyRadiomics features of GTV-T and GTV-N of one converted patient."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmfusion.commands._per_patient import register_per_patient


def radiomics(folder: Path, section: Mapping[str, Any]) -> str:
    from mmfusion.features.radiomics import RadiomicsSettings, run_radiomics

    row = run_radiomics(folder, RadiomicsSettings.from_config(section))
    return f"{len(row) - 1} columns, gtvn_present={row['gtvn_present']}"


def register(subparsers: argparse._SubParsersAction) -> None:
    register_per_patient(
        subparsers, "radiomics",
        help="PyRadiomics features of one converted patient (radiomics.tsv)",
        description="Reads ct/gtv_t/gtv_n NIfTIs from PATIENT_DIR and writes "
        "PATIENT_DIR/radiomics.tsv (one row) and PATIENT_DIR/radiomics_provenance.json.",
        section="radiomics", stage=radiomics)
