"""Report stage, run by `workflow/rules/report.smk` (rule `build_report` = `mmfusion report`):
metrics tables (paper Table 2 shape, at the validation-chosen threshold and at 0.5), paired
tests (fold-stratified DeLong, paired t-test over folds), calibration, decision curves,
confusion matrices, figures, a Markdown summary, the HTML report's front page fragment and
a model card (TRIPOD+AI items).

- `summary`: collects every variant's per-fold metrics and predictions; the paired tests.
- `delong`: DeLong's paired AUC test, within folds and combined over folds.
- `thresholds`: confusion counts and threshold metrics (chosen threshold, 0.5).
- `calibration`: logistic recalibration (slope, intercept) and readable bins.
- `decision`: decision curve analysis (net benefit).
- `cohort_facts`: cohort counts, events per fold, exclusions by reason (no IDs, no paths).
- `figures`: the PNG figures. `markdown`: summary.md and front_page.rst.
- `model_card`: model_card.md. `build`: writes the report folder.
"""
