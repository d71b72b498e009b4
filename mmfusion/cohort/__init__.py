"""Cohort stage: table validation and merge, QC exclusions, folds, in-fold preprocessing."""
