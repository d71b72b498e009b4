# Cross-fold report: tables (paper Table 2 shape, at the validation-chosen threshold and at
# 0.5), fold-stratified DeLong and paired t-tests, calibration, decision curves, confusion
# matrices, figures, summary.md and the model card (TRIPOD+AI items).
# `snakemake --report results/report/report.html` then bundles them with captions; its front
# page (workflow/report/workflow.rst, the Snakefile's `report:`) includes front_page.rst.
# table3.csv (paper Table 3 shape) is an output only when model.variants lists a Table 3
# ablation (mmfusion.model.variants.TABLE3): the demo gains no empty table.
# Paper Fig. 3 (rule plot_trajectories, `mmfusion trajectory`) is made only when
# model.variants lists a diffusion variant (mmfusion or a Table 3 ablation).
from mmfusion.model.variants import TABLE3, VARIANTS

REPORT_DIR = f"{RESULTS}/report"
TABLE3_OUTPUT = (
    {
        "table3": report(
            f"{REPORT_DIR}/table3.csv",
            caption="../report/table3.rst",
            category="Tables",
        )
    }
    if any(v in TABLE3 for v in config["model"]["variants"])
    else {}
)


rule build_report:
    input:
        metrics=expand(
            f"{RESULTS}/models/{{variant}}/fold{{fold}}/metrics.json",
            variant=config["model"]["variants"],
            fold=FOLDS,
        ),
        predictions=expand(
            f"{RESULTS}/models/{{variant}}/fold{{fold}}/predictions.csv",
            variant=config["model"]["variants"],
            fold=FOLDS,
        ),
        truth=TRUTH,
        config=RESOLVED_CONFIG,
        table=rules.build_cohort.output.table,
        spec=rules.build_cohort.output.spec,
        exclusions=rules.build_cohort.output.exclusions,
        folds=rules.make_folds.output.folds,
    output:
        summary=report(
            f"{REPORT_DIR}/metrics_summary.csv",
            caption="../report/metrics_summary.rst",
            category="Tables",
        ),
        variants=f"{REPORT_DIR}/variants.csv",
        tests=report(
            f"{REPORT_DIR}/paired_tests.csv",
            caption="../report/paired_tests.rst",
            category="Tables",
        ),
        repeated=report(
            f"{REPORT_DIR}/repeated_cv.csv",
            caption="../report/repeated_cv.rst",
            category="Tables",
        ),
        calibration_table=report(
            f"{REPORT_DIR}/calibration.csv",
            caption="../report/calibration_table.rst",
            category="Tables",
        ),
        decision_table=report(
            f"{REPORT_DIR}/decision_curve.csv",
            caption="../report/decision_curve_table.rst",
            category="Tables",
        ),
        confusion_table=report(
            f"{REPORT_DIR}/confusion_matrices.csv",
            caption="../report/confusion_table.rst",
            category="Tables",
        ),
        markdown=report(
            f"{REPORT_DIR}/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        model_card=report(
            f"{REPORT_DIR}/model_card.md",
            caption="../report/model_card.rst",
            category="Summary",
        ),
        front_page=f"{REPORT_DIR}/front_page.rst",
        roc=report(
            f"{REPORT_DIR}/figures/roc.png",
            caption="../report/roc.rst",
            category="Evaluation",
        ),
        calibration=report(
            f"{REPORT_DIR}/figures/calibration.png",
            caption="../report/calibration.rst",
            category="Evaluation",
        ),
        decision_curve=report(
            f"{REPORT_DIR}/figures/decision_curve.png",
            caption="../report/decision_curve.rst",
            category="Evaluation",
        ),
        confusion=report(
            f"{REPORT_DIR}/figures/confusion_matrices.png",
            caption="../report/confusion.rst",
            category="Evaluation",
        ),
        config=report(
            f"{REPORT_DIR}/config.resolved.yaml",
            caption="../report/config.rst",
            category="Configuration",
        ),
        auc_by_fold=report(
            f"{REPORT_DIR}/figures/auc_by_fold.png",
            caption="../report/auc_by_fold.rst",
            category="Evaluation",
        ),
        **TABLE3_OUTPUT,
    params:
        truth=TRUTH_OPTION,
    log:
        f"{RESULTS}/logs/build_report.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_report.tsv"
    resources:
        mem_mb=RES.mem("build_report"),
        runtime=RES.runtime("build_report"),
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mmfusion report --metrics {input.metrics:q}"
        " --predictions {input.predictions:q}"
        " --out \"$(dirname {output.summary:q})\" {params.truth}"
        " --config {input.config:q}"
        " --table {input.table:q} --folds {input.folds:q} --spec {input.spec:q}"
        " --exclusions {input.exclusions:q}"
        " > {log:q} 2>&1"


FINAL_TARGETS.append(rules.build_report.output.summary)


# Paper Fig. 3: the diffusion's reverse trajectory of every fold's test patients (t-SNE
# of the noise network's hidden features at steps T..1, Davies-Bouldin per step, y_t in
# its own coordinates), for each diffusion variant in model.variants (mmfusion and its
# Table 3 ablations); none when there is none. Repeat 0's folds (each patient once) and, with
# train.seeds > 1, each fold's seed 0 (models/{variant}/fold{k}/seed0: model.pt,
# scoring.json, preprocessor.json beside its metrics.json).
DIFFUSION_VARIANTS = [v for v in DEEP_VARIANTS if VARIANTS[v][2]]
FIG3_MODEL = (
    f"{RESULTS}/models/{{variant}}/fold{{fold}}/seed0"
    if MULTI_SEED
    else f"{RESULTS}/models/{{variant}}/fold{{fold}}"
)

if DIFFUSION_VARIANTS:

    rule plot_trajectories:
        input:
            metrics=expand(
                f"{FIG3_MODEL}/metrics.json",
                variant=DIFFUSION_VARIANTS,
                fold=FIRST_REPEAT_FOLDS,
            ),
            table=rules.build_cohort.output.table,
            spec=rules.build_cohort.output.spec,
            folds=rules.make_folds.output.folds,
            cache=rules.cache_patches.output.cache,
        output:
            table=report(
                f"{REPORT_DIR}/fig3_davies_bouldin.csv",
                caption="../report/fig3_davies_bouldin_table.rst",
                category="Figures",
            ),
            folds=report(
                expand(
                    f"{REPORT_DIR}/fig3/{{variant}}_fold{{fold}}.png",
                    variant=DIFFUSION_VARIANTS,
                    fold=FIRST_REPEAT_FOLDS,
                ),
                caption="../report/fig3_tsne.rst",
                category="Figures",
            ),
            y_t=report(
                expand(
                    f"{REPORT_DIR}/fig3/{{variant}}_fold{{fold}}_y_t.png",
                    variant=DIFFUSION_VARIANTS,
                    fold=FIRST_REPEAT_FOLDS,
                ),
                caption="../report/fig3_y_t.rst",
                category="Figures",
            ),
            davies_bouldin=report(
                expand(
                    f"{REPORT_DIR}/fig3/{{variant}}_davies_bouldin.png",
                    variant=DIFFUSION_VARIANTS,
                ),
                caption="../report/fig3_davies_bouldin.rst",
                category="Figures",
            ),
            representations=f"{REPORT_DIR}/fig3/representations.csv",
            info=f"{REPORT_DIR}/fig3/info.json",
        params:
            variants=" ".join(DIFFUSION_VARIANTS),
            # results/models, from the cohort table's path (results/cohort/table.tsv)
            models=lambda wildcards, input: str(Path(input.table).parent.parent / "models"),
            folds=" ".join(str(k) for k in FIRST_REPEAT_FOLDS),
            member="--member seed0" if MULTI_SEED else "",
        threads: 1
        log:
            f"{RESULTS}/logs/plot_trajectories.log",
        benchmark:
            f"{RESULTS}/benchmarks/plot_trajectories.tsv"
        resources:
            mem_mb=RES.mem("plot_trajectories"),
            runtime=RES.runtime("plot_trajectories"),
        conda:
            "../../envs/train.yaml"
        shell:
            "python -m mmfusion trajectory"
            " --models-dir {params.models:q} --fold-numbers {params.folds} {params.member}"
            " --variants {params.variants} --table {input.table:q} --spec {input.spec:q}"
            " --folds {input.folds:q} --cache {input.cache:q}"
            " --out \"$(dirname {output.table:q})\" --device cpu --threads {threads}"
            " > {log:q} 2>&1"

    FINAL_TARGETS.append(rules.plot_trajectories.output.table)
