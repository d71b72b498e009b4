# Demo cohort generation: only when config says the cohort is synthetic.


if SYNTHETIC:

    rule synth_cohort:
        output:
            manifest=f"{DEMO_COHORT}/manifest.json",
            clinical=f"{DEMO_COHORT}/clinical.csv",
            hematology=f"{DEMO_COHORT}/hematology.csv",
            truth=f"{DEMO_COHORT}/truth.csv",
        params:
            synth=config["synth"],
        threads: 8
        log:
            f"{RESULTS}/logs/synth_cohort.log",
        benchmark:
            f"{RESULTS}/benchmarks/synth_cohort.tsv"
        resources:
            mem_mb=RES.mem("synth_cohort"),
            runtime=RES.runtime("synth_cohort"),
        conda:
            "../../envs/preprocess.yaml"
        shell:
            "python -m mmfusion synth --out \"$(dirname {output.manifest:q})\""
            " --n-patients {params.synth[n_patients]}"
            " --seed {params.synth[seed]}"
            " --prevalence {params.synth[prevalence]}"
            " --matrix {params.synth[matrix]}"
            " --n-slices {params.synth[n_slices]}"
            " --pixel-spacing {params.synth[pixel_spacing]}"
            " --slice-thickness {params.synth[slice_thickness]}"
            " --jobs {threads} --no-progress"
            " > {log:q} 2>&1"

    FINAL_TARGETS.append(rules.synth_cohort.output.manifest)
