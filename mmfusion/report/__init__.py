"""Report stage, run by `workflow/rules/report.smk` (rule `build_report` = `mmfusion report`):
metrics tables (paper Table 2 shape), paired DeLong tests, ROC / calibration / per-fold AUC
figures and a Markdown summary with the run's configuration.

- `summary`: collects every variant's per-fold metrics and predictions into tables.
- `delong`: DeLong's paired AUC test, within folds and combined over folds.
- `figures`: the PNG figures. `build`: writes the report folder.
"""
