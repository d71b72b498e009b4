# Train and evaluate every variant on every fold (mmfusion/train/, mmfusion/model/).
# Deep variants read a memory-mapped patch cache built once per cohort table; with
# model.freeze_backbone they read the backbone's feature maps, computed once from it.
# Folds of every repeat (folds.repeats) are folds 0 .. R*K-1 of folds.tsv. With
# train.seeds = S > 1 every fold trains S times (models/{variant}/fold{k}/seed{s}/, one
# job each) and rule ensemble_seeds writes the fold's own files (mean of the seeds'
# recalibrated probabilities, mmfusion/train/seed_ensemble.py); with S = 1 training writes
# models/{variant}/fold{k}/ directly, as it always did.
import json
import shlex

MODEL_SETTINGS = json.dumps({k: v for k, v in config["model"].items() if k != "variants"})
# gpus_per_job is a resource request, seeds the job count: neither is a training setting
TRAIN_SETTINGS = json.dumps(
    {k: v for k, v in config["train"].items() if k not in ("gpus_per_job", "seeds")}
)
PREPROCESS_SETTINGS = json.dumps(config["preprocess"])
MODEL_DIR = f"{RESULTS}/models/{{variant}}/fold{{fold}}"
MULTI_SEED = len(SEEDS) > 1
# where one training run writes, and its log name
RUN_DIR = f"{MODEL_DIR}/seed{{seed}}" if MULTI_SEED else MODEL_DIR
RUN_NAME = "{variant}_fold{fold}_seed{seed}" if MULTI_SEED else "{variant}_fold{fold}"
# `--seed-index s` of a seed's training run (train.seeds > 1); none otherwise
seed_option = lambda wildcards: f"--seed-index {wildcards.seed}" if MULTI_SEED else ""


rule cache_patches:
    input:
        table=f"{RESULTS}/cohort/table.tsv",
        patches=converted_patches,
    output:
        cache=directory(f"{RESULTS}/cache/patches"),
    params:
        patients_dir=f"{RESULTS}/patients",
    log:
        f"{RESULTS}/logs/cache_patches.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache_patches.tsv"
    resources:
        mem_mb=RES.mem("cache_patches"),
        runtime=RES.runtime("cache_patches"),
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mmfusion train cache --table {input.table:q} --patients-dir {params.patients_dir:q}"
        " --out {output.cache:q} > {log:q} 2>&1"


rule cache_features:
    input:
        cache=rules.cache_patches.output.cache,
        pretrained=config["model"]["pretrained"] or [],
    output:
        features=directory(FEATURE_CACHE),
    params:
        model=MODEL_SETTINGS,
        train=TRAIN_SETTINGS,
    threads: 2
    log:
        f"{RESULTS}/logs/cache_features.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache_features.tsv"
    resources:
        mem_mb=RES.mem("cache_features"),
        runtime=RES.runtime("cache_features"),
        gpu=RES.gpus,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mmfusion train features --cache {input.cache:q}"
        " --model-settings {params.model:q} --train-settings {params.train:q}"
        " --out {output.features:q} --threads {threads} > {log:q} 2>&1"


rule train_fold:
    input:
        table=f"{RESULTS}/cohort/table.tsv",
        spec=f"{RESULTS}/cohort/feature_spec.json",
        folds=f"{RESULTS}/cohort/folds.tsv",
        cache=rules.cache_patches.output.cache,
        features=frozen_feature_cache,
    output:
        predictions=f"{RUN_DIR}/predictions.csv",
        metrics=f"{RUN_DIR}/metrics.json",
    wildcard_constraints:
        variant=DEEP_VARIANT_PATTERN,
    params:
        model=MODEL_SETTINGS,
        train=TRAIN_SETTINGS,
        preprocess=PREPROCESS_SETTINGS,
        out=RUN_DIR,
        features=FEATURES_OPTION,
        seed=seed_option,
    # one torch thread per job: on CPU, parallel jobs beat threads on these small
    # networks; raise with `--set-threads train_fold=N` (e.g. one job per GPU)
    threads: 1
    log:
        f"{RESULTS}/logs/train_fold/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_fold/{RUN_NAME}.tsv"
    resources:
        mem_mb=RES.mem("train_fold"),
        runtime=RES.runtime("train_fold"),
        gpu=RES.gpus,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mmfusion train fold --table {input.table:q} --spec {input.spec:q}"
        " --folds {input.folds:q} --cache {input.cache:q} {params.features}"
        " --fold {wildcards.fold} {params.seed}"
        " --variant {wildcards.variant} --model-settings {params.model:q}"
        " --train-settings {params.train:q} --preprocess-settings {params.preprocess:q}"
        " --out {params.out:q} --threads {threads} > {log:q} 2>&1"


rule train_baseline:
    input:
        table=f"{RESULTS}/cohort/table.tsv",
        spec=f"{RESULTS}/cohort/feature_spec.json",
        folds=f"{RESULTS}/cohort/folds.tsv",
    output:
        predictions=f"{RUN_DIR}/predictions.csv",
        metrics=f"{RUN_DIR}/metrics.json",
    wildcard_constraints:
        variant=BASELINE_PATTERN,
    params:
        train=TRAIN_SETTINGS,
        preprocess=PREPROCESS_SETTINGS,
        out=RUN_DIR,
        seed=seed_option,
    log:
        f"{RESULTS}/logs/train_baseline/{RUN_NAME}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_baseline/{RUN_NAME}.tsv"
    resources:
        mem_mb=RES.mem("train_baseline"),
        runtime=RES.runtime("train_baseline"),
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mmfusion train fold --table {input.table:q} --spec {input.spec:q}"
        " --folds {input.folds:q} --fold {wildcards.fold} {params.seed}"
        " --variant {wildcards.variant}"
        " --train-settings {params.train:q} --preprocess-settings {params.preprocess:q}"
        " --out {params.out:q} > {log:q} 2>&1"


if MULTI_SEED:

    # seconds of CSV arithmetic: run where Snakemake runs, not as a cluster job
    localrules:
        ensemble_seeds,

    rule ensemble_seeds:
        input:
            metrics=expand(f"{MODEL_DIR}/seed{{seed}}/metrics.json", seed=SEEDS,
                           allow_missing=True),
            predictions=expand(f"{MODEL_DIR}/seed{{seed}}/predictions.csv", seed=SEEDS,
                               allow_missing=True),
        output:
            predictions=f"{MODEL_DIR}/predictions.csv",
            metrics=f"{MODEL_DIR}/metrics.json",
        params:
            members=lambda wildcards, input: " ".join(
                shlex.quote(str(Path(m).parent)) for m in input.metrics
            ),
            out=MODEL_DIR,
        log:
            f"{RESULTS}/logs/ensemble_seeds/{{variant}}_fold{{fold}}.log",
        resources:
            mem_mb=RES.mem("ensemble_seeds"),
            runtime=RES.runtime("ensemble_seeds"),
        conda:
            "../../envs/train.yaml"
        shell:
            "python -m mmfusion train ensemble --members {params.members}"
            " --variant {wildcards.variant} --fold {wildcards.fold} --out {params.out:q}"
            " > {log:q} 2>&1"


FINAL_TARGETS.extend(
    expand(
        f"{RESULTS}/models/{{variant}}/fold{{fold}}/{{name}}",
        variant=DEEP_VARIANTS + BASELINE_VARIANTS,
        fold=FOLDS,
        name=["predictions.csv", "metrics.json"],
    )
)
