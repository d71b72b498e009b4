# Config validation, wildcard constraints and every input function of the rule files
# (built once here from mmfusion/workflow/inputs.py). No rules here.
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate


# Rules run the package of this checkout as `python -m mmfusion ...`, in the pip venv and
# in the rules' conda envs alike (those carry only the dependencies).
PACKAGE_DIR = str(Path(workflow.basedir).resolve())
_PACKAGE_ROOT = shlex.quote(PACKAGE_DIR)
# The input functions below come from the package of this checkout.
if PACKAGE_DIR not in sys.path:
    sys.path.insert(0, PACKAGE_DIR)

# Nested --config values arrive as strings (--config 'folds={repeats: 2}'): typed here.
from mmfusion.settings import config_schema
from mmfusion.workflow.cli_config import coerce_cli_scalars

coerce_cli_scalars(config, config_schema())

# Fills every omitted key with the schema's default (the schema is the one place defaults
# are defined; the package's settings classes read theirs from it too).
validate(config, schema="../schemas/config.schema.yaml")
# (the prefix is formatted again like a shell command, hence the quadrupled braces)
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={_PACKAGE_ROOT}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

from mmfusion.dicom.rois import compile_roi_regex
from mmfusion.settings import write_resolved_config
from mmfusion.workflow.resources import RuleResources
from mmfusion.workflow.batches import install_group_components_fix
from mmfusion.workflow.inputs import (
    BASELINE_PATTERN,
    DEEP_VARIANT_PATTERN,
    CohortInputs,
    ConvertStatuses,
    PatientOutputs,
    option,
    split_variants,
)

# An invalid ROI regex stops the run here, before any job (the schema cannot check regexes).
for _key in ("tumour", "node"):
    compile_roi_regex(config["rois"][_key], _key)

COHORT = CohortInputs.from_config(config)
RESULTS = COHORT.results
SYNTHETIC = COHORT.synthetic
DEMO_COHORT = COHORT.demo_cohort

# What this run uses, after defaults: rewritten only when it changes (the report shows it).
RESOLVED_CONFIG = f"{RESULTS}/config.resolved.yaml"
write_resolved_config(config, RESOLVED_CONFIG)


wildcard_constraints:
    patient=r"[A-Za-z0-9._-]+",
    fold=r"\d+",
    seed=r"\d+",
    variant=r"[a-z0-9_]+",


# ---- ingest (index -> convert) and per-patient inputs: walk the two checkpoints
index_dicom_inputs = COHORT.index_inputs
convert_statuses = ConvertStatuses(checkpoints, RESULTS)
converted_outputs = PatientOutputs(checkpoints, RESULTS, "patches.npz", "qc.png", "radiomics.tsv")
converted_radiomics = PatientOutputs(checkpoints, RESULTS, "radiomics.tsv")
converted_patches = PatientOutputs(checkpoints, RESULTS, "patches.npz")

# ---- cohort inputs
HEMATOLOGY = COHORT.hematology_inputs()  # [] when the cohort has no hematology table
HEMATOLOGY_OPTION = option("--hematology", HEMATOLOGY)

# ---- resources (mem_mb, runtime, gpu) of every rule, scaled from the config
RES = RuleResources.from_config(config)

# Cluster batch jobs of the per-patient stages (`group:` + a profile's group-components):
# Snakemake 9 re-merges its batches at every regrouping; mmfusion/workflow/batches.py fixes
# it, on a verified Snakemake, and only in runs that use group-components.
install_group_components_fix()

# ---- train inputs
DEEP_VARIANTS, BASELINE_VARIANTS = split_variants(config["model"]["variants"])
# repeated cross-validation (folds.repeats = R): fold g is fold g mod K of repeat g // K;
# repeat 0's folds are the folds of R = 1. SEEDS: training runs per fold (train.seeds).
FOLDS = list(range(config["folds"]["n_folds"] * config["folds"]["repeats"]))
FIRST_REPEAT_FOLDS = list(range(config["folds"]["n_folds"]))
SEEDS = list(range(config["train"]["seeds"]))
FEATURE_CACHE = f"{RESULTS}/cache/features"
FROZEN = bool(config["model"]["freeze_backbone"])
FEATURES_OPTION = f"--features {shlex.quote(FEATURE_CACHE)}" if FROZEN else ""


def frozen_feature_cache(wildcards):
    """The backbone feature cache train_fold reads when model.freeze_backbone; else none."""
    return FEATURE_CACHE if FROZEN else []


# ---- report inputs
TRUTH = COHORT.truth_inputs()  # the demo's truth.csv (oracle AUC); none for a real cohort
TRUTH_OPTION = option("--truth", TRUTH)


# Each rule file appends paths or input functions (wildcards -> paths) of its final
# outputs here; `rule all` requests all of them.
FINAL_TARGETS = []


def all_targets(wildcards):
    targets = []
    for item in FINAL_TARGETS:
        value = item(wildcards) if callable(item) else item
        targets.extend([value] if isinstance(value, str) else list(value))
    return targets
