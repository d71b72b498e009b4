"""Cohort stage, run by `workflow/rules/cohort.smk` (rules `build_cohort` = `mmfusion cohort
build`, `make_folds` = `mmfusion cohort folds`).

- `tables`: reading and validating the clinical and hematology tables (declared columns).
- `status`: the convert stage's per-patient status files and their summary.
- `merge`: tables + radiomics rows + statuses -> `cohort/table.tsv`, feature spec, QC exclusions.
- `folds`: stratified patient-level folds with a validation split (`cohort/folds.tsv`).
- `preprocess`: in-fold imputation, scaling, encoding and radiomics selection (used by train).
"""
