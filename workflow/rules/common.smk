# Config validation, wildcard constraints and input functions shared by all rule files.
# No rules here.
import json
import shlex
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

# Rules run the package of this checkout as `python -m mmfusion ...`, in the pip venv and
# in the rules' conda envs alike (those carry only the dependencies).
_PACKAGE_ROOT = shlex.quote(str(Path(workflow.basedir).resolve()))
# (the prefix is formatted again like a shell command, hence the quadrupled braces)
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={_PACKAGE_ROOT}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

RESULTS = config["results"]
SYNTHETIC = config["cohort"]["synthetic"]
DEMO_COHORT = f"{RESULTS}/demo_cohort"


wildcard_constraints:
    patient=r"[A-Za-z0-9._-]+",
    fold=r"\d+",
    variant=r"[a-z0-9_]+",


def cohort_input(kind):
    """Path of a cohort input (dicom_root, clinical, hematology): generated or the user's."""
    if SYNTHETIC:
        return {
            "dicom_root": f"{DEMO_COHORT}/dicom",
            "clinical": f"{DEMO_COHORT}/clinical.csv",
            "hematology": f"{DEMO_COHORT}/hematology.csv",
        }[kind]
    return config["cohort"][kind]


def dicom_root_marker():
    """A file whose existence means the DICOM root is complete (synth writes one)."""
    if SYNTHETIC:
        return f"{DEMO_COHORT}/manifest.json"
    return []


# Each rule file appends paths or input functions (wildcards -> paths) of its final
# outputs here; `rule all` requests all of them.
FINAL_TARGETS = []


def all_targets(wildcards):
    targets = []
    for item in FINAL_TARGETS:
        value = item(wildcards) if callable(item) else item
        targets.extend([value] if isinstance(value, str) else list(value))
    return targets
