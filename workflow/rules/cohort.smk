# Cohort table (tables + radiomics rows + conversion statuses), QC exclusions and folds.
import json

COHORT_KEYS = json.dumps(
    {k: config["cohort"][k] for k in ("id_column", "label_column", "positive_value")}
)
TABLES_SETTINGS = json.dumps(config["tables"])
FOLDS_SETTINGS = json.dumps(config["folds"])


# Preflight, right after the index and before any conversion (convert_patient waits for
# it): the index against the tables and the config, in seconds. Errors stop the run; the
# findings TSV is declared as a log so it stays when the check fails.
rule preflight:
    input:
        clinical=COHORT.clinical,
        hematology=HEMATOLOGY,
        index=f"{RESULTS}/dicom_index.tsv",
        manifest=f"{RESULTS}/manifest_index.tsv",
    output:
        summary=f"{RESULTS}/qc/preflight_summary.json",
    params:
        cohort=COHORT_KEYS,
        tables=TABLES_SETTINGS,
        rois=json.dumps(config["rois"]),
        folds=FOLDS_SETTINGS,
        hematology=HEMATOLOGY_OPTION,
    log:
        report=f"{RESULTS}/qc/preflight.tsv",
        log=f"{RESULTS}/logs/preflight.log",
    benchmark:
        f"{RESULTS}/benchmarks/preflight.tsv"
    resources:
        mem_mb=RES.mem("preflight"),
        runtime=RES.runtime("preflight"),
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion check --index {input.index:q} --manifest-index {input.manifest:q}"
        " --clinical {input.clinical:q}"
        " {params.hematology} --cohort-settings {params.cohort:q}"
        " --tables-settings {params.tables:q} --rois-settings {params.rois:q}"
        " --folds-settings {params.folds:q} --report {log.report:q}"
        " --summary {output.summary:q} > {log.log:q} 2>&1"


rule build_cohort:
    input:
        clinical=COHORT.clinical,
        hematology=HEMATOLOGY,
        index=f"{RESULTS}/dicom_index.tsv",
        statuses=convert_statuses,
        radiomics=converted_radiomics,
    output:
        table=f"{RESULTS}/cohort/table.tsv",
        spec=f"{RESULTS}/cohort/feature_spec.json",
        exclusions=f"{RESULTS}/qc/exclusions.tsv",
    params:
        cohort=COHORT_KEYS,
        tables=TABLES_SETTINGS,
        hematology=HEMATOLOGY_OPTION,
    log:
        f"{RESULTS}/logs/build_cohort.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_cohort.tsv"
    resources:
        mem_mb=RES.mem("build_cohort"),
        runtime=RES.runtime("build_cohort"),
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion cohort build --clinical {input.clinical:q}"
        " {params.hematology} --index {input.index:q}"
        " --status {input.statuses:q}"
        " --cohort-settings {params.cohort:q} --tables-settings {params.tables:q}"
        " --table {output.table:q} --spec {output.spec:q} --exclusions {output.exclusions:q}"
        " > {log:q} 2>&1"


rule make_folds:
    input:
        table=rules.build_cohort.output.table,
    output:
        folds=f"{RESULTS}/cohort/folds.tsv",
    params:
        settings=FOLDS_SETTINGS,
    log:
        f"{RESULTS}/logs/make_folds.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_folds.tsv"
    resources:
        mem_mb=RES.mem("make_folds"),
        runtime=RES.runtime("make_folds"),
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion cohort folds --table {input.table:q} --settings {params.settings:q}"
        " --out {output.folds:q} > {log:q} 2>&1"


FINAL_TARGETS.extend(
    [
        rules.build_cohort.output.table,
        rules.build_cohort.output.exclusions,
        rules.make_folds.output.folds,
        rules.preflight.output.summary,
    ]
)
