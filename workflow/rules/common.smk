# Config validation, wildcard constraints and input functions shared by all rule files.
# No rules here.
import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

# Rules run the package of this checkout as `python -m mmfusion ...`, in the pip venv and
# in the rules' conda envs alike (those carry only the dependencies).
PACKAGE_DIR = str(Path(workflow.basedir).resolve())
_PACKAGE_ROOT = shlex.quote(PACKAGE_DIR)
# The rule files' input functions import small helpers of the package too.
if PACKAGE_DIR not in sys.path:
    sys.path.insert(0, PACKAGE_DIR)
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


# ---- ingest (index -> convert) input functions

def index_dicom_inputs(wildcards):
    """The DICOM root (a user's folder) or, for the demo, the synth manifest that marks
    the generated tree complete (the generated folder itself is no declared output)."""
    if SYNTHETIC:
        return {"marker": dicom_root_marker()}
    return {"root": cohort_input("dicom_root")}


def converted_status_files(wildcards):
    """convert_status.json of every patient in the index (waits for the index checkpoint)."""
    from mmfusion.dicom.index import patients_from_index

    index = checkpoints.index_dicom.get().output[0]
    return [f"{RESULTS}/patients/{p}/convert_status.json" for p in patients_from_index(index)]


# ---- train input functions

FEATURE_CACHE = f"{RESULTS}/cache/features"


def frozen_feature_cache(wildcards):
    """The backbone feature cache train_fold reads when model.freeze_backbone; else none."""
    return FEATURE_CACHE if config["model"].get("freeze_backbone") else []


# ---- report input functions


def truth_table():
    """The demo cohort's truth.csv (oracle AUC in the report); nothing for a real cohort."""
    return f"{DEMO_COHORT}/truth.csv" if SYNTHETIC else []


def truth_option():
    return f"--truth {shlex.quote(truth_table())}" if SYNTHETIC else ""


# Each rule file appends paths or input functions (wildcards -> paths) of its final
# outputs here; `rule all` requests all of them.
FINAL_TARGETS = []


def all_targets(wildcards):
    targets = []
    for item in FINAL_TARGETS:
        value = item(wildcards) if callable(item) else item
        targets.extend([value] if isinstance(value, str) else list(value))
    return targets
