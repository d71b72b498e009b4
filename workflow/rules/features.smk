# Crop and radiomics, one job per converted patient (status ok only); the patient list
# comes from the input functions of common.smk (converted_outputs).
import json

CROP_SETTINGS = json.dumps(config["crop"])
RADIOMICS_SETTINGS = json.dumps(config["radiomics"])
RADIOMICS_PARAMS = (
    config["radiomics"].get("params") or f"{PACKAGE_DIR}/mmfusion/data/radiomics_params.yaml"
)
PATIENT_DIR = f"{RESULTS}/patients/{{patient}}"



rule crop_patient:
    input:
        status=f"{PATIENT_DIR}/convert_status.json",
    output:
        patches=f"{PATIENT_DIR}/patches.npz",
        qc=f"{PATIENT_DIR}/qc.png",
    params:
        settings=CROP_SETTINGS,
    group:
        "patients"
    log:
        f"{RESULTS}/logs/crop_patient/{{patient}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/crop_patient/{{patient}}.tsv"
    resources:
        mem_mb=RES.mem("crop_patient"),
        runtime=RES.runtime("crop_patient"),
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion crop {input.status:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


rule extract_radiomics:
    input:
        status=f"{PATIENT_DIR}/convert_status.json",
        params=RADIOMICS_PARAMS,
    output:
        row=f"{PATIENT_DIR}/radiomics.tsv",
        provenance=f"{PATIENT_DIR}/radiomics_provenance.json",
    params:
        settings=RADIOMICS_SETTINGS,
    group:
        "patients"
    log:
        f"{RESULTS}/logs/extract_radiomics/{{patient}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_radiomics/{{patient}}.tsv"
    resources:
        mem_mb=RES.mem("extract_radiomics"),
        runtime=RES.runtime("extract_radiomics"),
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion radiomics {input.status:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


FINAL_TARGETS.append(converted_outputs)
