# MMFusion workflow: DICOM-RT + clinical/hematology tables -> LNM classifier.
# Run: snakemake --cores 8 [--use-conda] [--configfile my_config.yaml]
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets,
