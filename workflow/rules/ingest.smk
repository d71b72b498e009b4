# Ingestion: index the DICOM archive and the manifest (checkpoint: its patient list drives
# every per-patient rule), then convert each patient's CT + contours (RTSTRUCT or DICOM-SEG;
# or the manifest's NIfTI/NRRD/... image and masks) to NIfTI volumes and masks.
# A foreseeable refusal is recorded as status "excluded" in convert_status.json; the
# summary checkpoint then tells downstream rules which patients converted.
CONVERT_DIR = f"{RESULTS}/patients/{{patient}}"


checkpoint index_dicom:
    input:
        unpack(index_dicom_inputs),
    output:
        index=f"{RESULTS}/dicom_index.tsv",
        manifest=f"{RESULTS}/manifest_index.tsv",
    params:
        sources=COHORT.index_arguments(),
    threads: 4
    resources:
        mem_mb=RES.mem("index_dicom"),
        runtime=RES.runtime("index_dicom"),
    log:
        f"{RESULTS}/logs/index_dicom.log",
    benchmark:
        f"{RESULTS}/benchmarks/index_dicom.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion index {params.sources} --out {output.index:q}"
        " --manifest-out {output.manifest:q} --workers {threads} --no-progress > {log:q} 2>&1"


rule convert_patient:
    input:
        index=f"{RESULTS}/dicom_index.tsv",
        manifest=f"{RESULTS}/manifest_index.tsv",
        preflight=f"{RESULTS}/qc/preflight_summary.json",
    output:
        status=f"{CONVERT_DIR}/convert_status.json",
    params:
        out=CONVERT_DIR,
        root=COHORT.dicom_root_option(),
        rois=config["rois"],
        convert=config["convert"],
    group:
        "convert"
    resources:
        mem_mb=RES.mem("convert_patient"),
        runtime=RES.runtime("convert_patient"),
    log:
        f"{RESULTS}/logs/convert_patient/{{patient}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_patient/{{patient}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion convert --index {input.index:q} --manifest-index {input.manifest:q}"
        " --patient {wildcards.patient:q}"
        " {params.root} --out {params.out:q} --status-out {output.status:q}"
        " --tumour-roi {params.rois[tumour]:q} --node-roi {params.rois[node]:q}"
        " --plane-tolerance {params.convert[plane_tolerance]}"
        " --missing-gap-factor {params.convert[missing_gap_factor]}"
        " --uneven-tolerance {params.convert[uneven_tolerance]}"
        " > {log:q} 2>&1"


checkpoint summarise_conversion:
    input:
        convert_statuses,
    output:
        f"{RESULTS}/qc/convert_summary.tsv",
    log:
        f"{RESULTS}/logs/summarise_conversion.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarise_conversion.tsv"
    resources:
        mem_mb=RES.mem("summarise_conversion"),
        runtime=RES.runtime("summarise_conversion"),
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "python -m mmfusion qc convert-summary --status {input:q} --out {output:q}"
        " > {log:q} 2>&1"


FINAL_TARGETS.append(rules.summarise_conversion.output[0])
