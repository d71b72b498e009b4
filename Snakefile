# MMFusion workflow: DICOM-RT + clinical/hematology tables -> LNM classifier.
# Run: snakemake --cores 8 [--use-conda] [--configfile my_config.yaml]
from snakemake.utils import min_version

min_version("9.0")

# Front page of `snakemake --report` (includes results/report/front_page.rst).
report: "workflow/report/workflow.rst"


# Your config file is the whole truth about your cohort: with --configfile, only that file
# is read (the demo's config.yaml is not), and every key it leaves out takes the default
# of workflow/schemas/config.schema.yaml. With no --configfile, the demo config runs.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bundle.smk"


rule all:
    default_target: True
    input:
        all_targets,
