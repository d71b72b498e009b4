# DICOM ingestion: index the archive (checkpoint: its patient list drives every
# per-patient rule), then convert each patient's CT + RTSTRUCT to NIfTI volumes and masks.
# A foreseeable refusal is recorded as status "excluded" in convert_status.json.
CONVERT_DIR = f"{RESULTS}/patients/{{patient}}"


def index_dicom_inputs(wildcards):
    """The DICOM root (a user's folder) or, for the demo, the synth manifest that marks
    the generated tree complete (the generated folder itself is no declared output)."""
    if SYNTHETIC:
        return {"marker": dicom_root_marker()}
    return {"root": cohort_input("dicom_root")}


checkpoint index_dicom:
    input:
        unpack(index_dicom_inputs),
    output:
        f"{RESULTS}/dicom_index.tsv",
    params:
        root=cohort_input("dicom_root"),
    threads: 4
    resources:
        mem_mb=2000,
    log:
        f"{RESULTS}/logs/index_dicom.log",
    benchmark:
        f"{RESULTS}/benchmarks/index_dicom.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion index {params.root:q} --out {output:q} --workers {threads}"
        " --no-progress > {log:q} 2>&1"


checkpoint convert_patient:
    input:
        index=f"{RESULTS}/dicom_index.tsv",
    output:
        status=f"{CONVERT_DIR}/convert_status.json",
    params:
        out=CONVERT_DIR,
        rois=config["rois"],
        convert=config["convert"],
    resources:
        mem_mb=3000,
    log:
        f"{RESULTS}/logs/convert_patient/{{patient}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_patient/{{patient}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion convert --index {input.index:q} --patient {wildcards.patient:q}"
        " --out {params.out:q} --status-out {output.status:q}"
        " --tumour-roi {params.rois[tumour]:q} --node-roi {params.rois[node]:q}"
        " --plane-tolerance {params.convert[plane_tolerance]}"
        " --missing-gap-factor {params.convert[missing_gap_factor]}"
        " --uneven-tolerance {params.convert[uneven_tolerance]}"
        " > {log:q} 2>&1"


def converted_status_files(wildcards):
    """convert_status.json of every patient in the index (waits for the index checkpoint)."""
    from mmfusion.dicom.index import patients_from_index

    index = checkpoints.index_dicom.get().output[0]
    return [f"{RESULTS}/patients/{p}/convert_status.json" for p in patients_from_index(index)]


FINAL_TARGETS.append(converted_status_files)
