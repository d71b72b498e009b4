"""Input functions and rule-level values of the Snakemake workflow, defined once.

`workflow/rules/common.smk` builds them from the validated config; the rule files only use
them. Torch-free (the workflow imports this while it parses its rules). The callables
walk the `index_dicom` and `summarise_conversion` checkpoints, so per-patient jobs are
requested only for indexed patients, and downstream jobs only for converted ones.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmfusion.model.variants import BASELINES, VARIANTS


@dataclass(frozen=True)
class CohortInputs:
    """Where the cohort comes from: the generated demo cohort or the user's files."""

    results: str
    synthetic: bool
    dicom_root: str  # "" = no DICOM archive (every patient from the manifest)
    clinical: str
    hematology: str  # "" = the cohort has no hematology table
    manifest: str = ""  # "" = no manifest (every patient from the DICOM archive)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CohortInputs:
        results, cohort = str(config["results"]), config["cohort"]
        if cohort["synthetic"]:
            demo = f"{results}/demo_cohort"
            return cls(results, True, f"{demo}/dicom", f"{demo}/clinical.csv",
                       f"{demo}/hematology.csv")
        return cls(results, False, str(cohort.get("dicom_root") or ""), str(cohort["clinical"]),
                   str(cohort.get("hematology") or ""), str(cohort.get("manifest") or ""))

    @property
    def demo_cohort(self) -> str:
        return f"{self.results}/demo_cohort"

    def index_inputs(self, wildcards: Any = None) -> dict[str, str]:
        """The DICOM root (a user's folder) or, for the demo, the synth manifest that marks
        the generated tree complete (the generated folder itself is no declared output)."""
        if self.synthetic:
            return {"marker": f"{self.demo_cohort}/manifest.json"}
        inputs = {"root": self.dicom_root} if self.dicom_root else {}
        return {**inputs, **({"manifest": self.manifest} if self.manifest else {})}

    def dicom_root_option(self) -> str:
        """`--dicom-root 'root'` for the convert rule, "" without a DICOM archive."""
        return option("--dicom-root", [self.dicom_root] if self.dicom_root else [])

    def index_arguments(self) -> str:
        """The `mmfusion index` arguments naming the cohort's sources (shell-quoted)."""
        parts = [shlex.quote(self.dicom_root)] if self.dicom_root else []
        if self.manifest:
            parts.append(f"--manifest {shlex.quote(self.manifest)}")
        return " ".join(parts)

    def hematology_inputs(self) -> list[str]:
        return [self.hematology] if self.hematology else []

    def truth_inputs(self) -> list[str]:
        """The demo cohort's truth.csv (oracle AUC in the report); none for a real cohort."""
        return [f"{self.demo_cohort}/truth.csv"] if self.synthetic else []


def option(flag: str, paths: Sequence[str]) -> str:
    """`--flag 'path'` for a one-element input list, "" for an empty one (optional input)."""
    return f"{flag} {shlex.quote(paths[0])}" if paths else ""


def status_path(results: str, patient: str) -> str:
    return f"{results}/patients/{patient}/convert_status.json"


def indexed_patients(checkpoints: Any) -> list[str]:
    """Sanitised IDs with a CT linked to its contours, and the manifest's patients (waits
    for the index checkpoint)."""
    from mmfusion.dicom.index import patients_from_index
    from mmfusion.images.manifest import patients_from_manifest_index

    output = checkpoints.index_dicom.get().output
    return sorted({*patients_from_index(output[0]), *patients_from_manifest_index(output[1])})


def converted_patients(checkpoints: Any) -> list[str]:
    """Indexed patients whose conversion succeeded (waits for the summary checkpoint)."""
    from mmfusion.cohort.status import read_converted_ok

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
                for p in converted_patients(self.checkpoints) for n in self.names]


def split_variants(variants: Sequence[str]) -> tuple[list[str], list[str]]:
    """The configured variants as (deep variants, classical baselines), config order."""
    return [v for v in variants if v in VARIANTS], [v for v in variants if v in BASELINES]


def variant_pattern(names: Sequence[str]) -> str:
    """A wildcard constraint matching exactly these variant names."""
    return "|".join(names)


DEEP_VARIANT_PATTERN = variant_pattern(list(VARIANTS))
BASELINE_PATTERN = variant_pattern(BASELINES)
