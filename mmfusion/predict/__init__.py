"""A trained model that leaves the workflow: bundles and `mmfusion predict`.

- `bundle`: `results/bundle/{variant}/` = per fold the weights (or a baseline's arrays),
  the fitted in-fold preprocessor, temperature and threshold, plus the settings every
  stage used, the feature spec, software versions, a README and a sha256 manifest
  (`manifest`). Nothing is pickled: JSON, `.npz` without objects, and a state dict read
  with `torch.load(weights_only=True)`.
- `prepare`: new patients' DICOM -> index -> checks -> convert -> crop -> radiomics with
  the bundle's settings (the stages' own package functions), plus their tables.
- `ensemble`: every fold's model scores every patient; the folds form an ensemble.
- `run`: `predict()`, what `mmfusion predict` runs; `external_report`: AUC, calibration
  and decision curve of an external cohort with labels.
- `settings`: the `external` config section (workflow/rules/bundle.smk).
"""
