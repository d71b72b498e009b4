"""Cross-fold report: metrics tables (paper Table 2 shape), paired tests, ROC and calibration."""
