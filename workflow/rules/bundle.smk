# A trained model that leaves the workflow (mmfusion/predict/): one bundle per variant with
# every fold's weights, fitted preprocessor, threshold and temperature, the settings of
# every stage, the feature spec, software versions and a sha256 manifest; and, when
# `external.dicom_root` is set, a second cohort scored by those bundles (`mmfusion predict`)
# with an external validation report where it has labels.
# Resources: stand-ins from RES until mmfusion/workflow/resources.py lists these rules.
from mmfusion.errors import ConfigError
from mmfusion.predict.settings import ExternalSettings

BUNDLE_DIR = f"{RESULTS}/bundle/{{variant}}"
EXTERNAL = ExternalSettings.from_config(config["external"])
EXTERNAL_DIR = f"{RESULTS}/external"


rule bundle_model:
    input:
        # train_fold / train_baseline write scoring.json, preprocessor.json and the weights
        # beside these
        metrics=expand(f"{RESULTS}/models/{{{{variant}}}}/fold{{fold}}/metrics.json", fold=FOLDS),
        config=RESOLVED_CONFIG,
        spec=f"{RESULTS}/cohort/feature_spec.json",
        params=RADIOMICS_PARAMS,
    output:
        bundle=directory(BUNDLE_DIR),
    log:
        f"{RESULTS}/logs/bundle_model/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/bundle_model/{{variant}}.tsv"
    resources:
        mem_mb=RES.mem("bundle_model"),
        runtime=RES.runtime("bundle_model"),
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mmfusion bundle build --variant {wildcards.variant}"
        " --models \"$(dirname \"$(dirname {input.metrics[0]:q})\")\""
        " --config {input.config:q} --spec {input.spec:q} --radiomics-params {input.params:q}"
        " --out {output.bundle:q} > {log:q} 2>&1"


FINAL_TARGETS.extend(expand(BUNDLE_DIR, variant=config["model"]["variants"]))


if EXTERNAL.enabled:
    _untrained = sorted(set(EXTERNAL.variants) - set(config["model"]["variants"]))
    if _untrained:
        raise ConfigError(f"external.variants {_untrained} are not trained "
                          f"(model.variants: {config['model']['variants']})",
                          fix="add them to model.variants or drop them from external.variants")
    EXTERNAL_HEMATOLOGY = [EXTERNAL.hematology] if EXTERNAL.hematology else []
    EXTERNAL_HEMATOLOGY_OPTION = option("--hematology", EXTERNAL_HEMATOLOGY)
    EXTERNAL_WORK = f"{EXTERNAL_DIR}/work"

    # index, checks, convert, crop and radiomics of the second cohort, once for every
    # bundle (they share the training run's settings; `predict` checks that they do)
    rule external_prepare:
        input:
            bundle=f"{RESULTS}/bundle/{EXTERNAL.variants[0]}",
            clinical=EXTERNAL.clinical,
            hematology=EXTERNAL_HEMATOLOGY,
        output:
            prepared=f"{EXTERNAL_WORK}/prepared.json",
        params:
            dicom=EXTERNAL.dicom_root,
            hematology=EXTERNAL_HEMATOLOGY_OPTION,
            work=EXTERNAL_WORK,
        threads: 4
        log:
            f"{RESULTS}/logs/external_prepare.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_prepare.tsv"
        resources:
            mem_mb=RES.mem("external_prepare"),
            runtime=RES.runtime("external_prepare"),
        conda:
            "../../envs/train.yaml"
        shell:
            "python -m mmfusion predict --bundle {input.bundle:q} --dicom {params.dicom:q}"
            " --clinical {input.clinical:q} {params.hematology} --out {params.work:q}"
            " --work {params.work:q} --prepare-only --workers {threads} --no-progress"
            " > {log:q} 2>&1"

    rule predict_external:
        input:
            bundle=BUNDLE_DIR,
            prepared=rules.external_prepare.output.prepared,
            clinical=EXTERNAL.clinical,
            hematology=EXTERNAL_HEMATOLOGY,
        output:
            predictions=f"{EXTERNAL_DIR}/{{variant}}/predictions.csv",
            exclusions=f"{EXTERNAL_DIR}/{{variant}}/exclusions.tsv",
        params:
            dicom=EXTERNAL.dicom_root,
            hematology=EXTERNAL_HEMATOLOGY_OPTION,
            work=EXTERNAL_WORK,
        threads: 1
        log:
            f"{RESULTS}/logs/predict_external/{{variant}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/predict_external/{{variant}}.tsv"
        resources:
            mem_mb=RES.mem("predict_external"),
            runtime=RES.runtime("predict_external"),
        conda:
            "../../envs/train.yaml"
        shell:
            "python -m mmfusion predict --bundle {input.bundle:q} --dicom {params.dicom:q}"
            " --clinical {input.clinical:q} {params.hematology}"
            " --out \"$(dirname {output.predictions:q})\" --work {params.work:q}"
            " --workers {threads} --no-progress > {log:q} 2>&1"

    # AUC (DeLong CI), calibration and decision curve where the cohort has labels; a
    # report saying so where it has none
    rule external_report:
        input:
            predictions=rules.predict_external.output.predictions,
        output:
            report=directory(f"{EXTERNAL_DIR}/{{variant}}/report"),
        log:
            f"{RESULTS}/logs/external_report/{{variant}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/external_report/{{variant}}.tsv"
        resources:
            mem_mb=RES.mem("external_report"),
            runtime=RES.runtime("external_report"),
        conda:
            "../../envs/train.yaml"
        shell:
            "python -m mmfusion bundle report --predictions {input.predictions:q}"
            " --variant {wildcards.variant} --out {output.report:q} > {log:q} 2>&1"

    FINAL_TARGETS.extend(
        expand(f"{EXTERNAL_DIR}/{{variant}}/report", variant=EXTERNAL.variants)
    )
