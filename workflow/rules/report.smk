# Cross-fold report: tables (paper Table 2 shape, at the validation-chosen threshold and at
# 0.5), fold-stratified DeLong and paired t-tests, calibration, decision curves, confusion
# matrices, figures, summary.md and the model card (TRIPOD+AI items).
# `snakemake --report results/report/report.html` then bundles them with captions; its front
# page (workflow/report/workflow.rst, the Snakefile's `report:`) includes front_page.rst.
# table3.csv (paper Table 3 shape) is an output only when model.variants lists a Table 3
# ablation (mmfusion.model.variants.TABLE3): the demo gains no empty table.
from mmfusion.model.variants import TABLE3

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
