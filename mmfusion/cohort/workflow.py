"""Snakemake input functions of the features and cohort rules (kept out of the .smk files).

They walk the `index_dicom` and `summarise_conversion` checkpoints, so downstream jobs
are requested only for patients whose conversion succeeded (all patients convert in
parallel before the one summary is read).
"""

from __future__ import annotations

from typing import Any

from mmfusion.cohort.status import read_converted_ok


def status_path(results: str, patient: str) -> str:
    return f"{results}/patients/{patient}/convert_status.json"


def indexed_patients(checkpoints: Any) -> list[str]:
    """Sanitised IDs with a CT linked to an RTSTRUCT (waits for the index checkpoint)."""
    from mmfusion.dicom.index import patients_from_index

    return patients_from_index(checkpoints.index_dicom.get().output[0])


def converted_patients(checkpoints: Any, results: str) -> list[str]:
    """Indexed patients whose conversion succeeded (waits for the summary checkpoint)."""
    return read_converted_ok(checkpoints.summarise_conversion.get().output[0])


class ConvertStatuses:
    """Input function: every indexed patient's convert_status.json (ok and excluded)."""

    def __init__(self, checkpoints: Any, results: str) -> None:
        self.checkpoints, self.results = checkpoints, results

    def __call__(self, wildcards: Any) -> list[str]:
        return [status_path(self.results, p) for p in indexed_patients(self.checkpoints)]


class PatientOutputs:
    """Input function: files `names` in the folder of every successfully converted patient."""

    def __init__(self, checkpoints: Any, results: str, *names: str) -> None:
        self.checkpoints, self.results, self.names = checkpoints, results, names

    def __call__(self, wildcards: Any) -> list[str]:
        return [f"{self.results}/patients/{p}/{n}"
                for p in converted_patients(self.checkpoints, self.results) for n in self.names]
