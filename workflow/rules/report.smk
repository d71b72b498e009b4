# Cross-fold report: tables (paper Table 2 shape), DeLong tests, ROC / calibration / AUC plots.
# `snakemake --report results/report/report.html` then bundles the figures with captions.
REPORT_DIR = f"{RESULTS}/report"


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
    output:
        summary=f"{REPORT_DIR}/metrics_summary.csv",
        variants=f"{REPORT_DIR}/variants.csv",
        tests=f"{REPORT_DIR}/paired_tests.csv",
        markdown=f"{REPORT_DIR}/summary.md",
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
        " > {log:q} 2>&1"


FINAL_TARGETS.append(rules.build_report.output.summary)
