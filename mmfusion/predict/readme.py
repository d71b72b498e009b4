"""The README.md written into every bundle (what it holds, how its folds are combined)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4g}"


SEED_NOTE = " and training seed (`fold{k}/seed{s}/`)"


def bundle_readme(info: dict[str, Any], settings: dict[str, Any],
                  versions: dict[str, str]) -> str:
    """README.md of a bundle built from `info` (bundle.json), `settings` and `versions`."""
    variant, k = info["variant"], len(info.get("members") or range(info["n_folds"]))
    seeds = SEED_NOTE if info.get("members") else ""
    tables = settings["tables"]
    clinical = [*tables["clinical"]["numeric"], *tables["clinical"]["categorical"]]
    hematology = [*tables["hematology"]["numeric"], *tables["hematology"]["categorical"]]
    fold_rows = "\n".join(
        f"| {i} | {_fmt(t)} | {_fmt(temp)} |"
        for i, (t, temp) in enumerate(zip(info["thresholds"], info["temperatures"],
                                          strict=True)))
    weights = ("`model.pt` (state dict; `torch.load(..., weights_only=True)`)"
               if info["kind"] == "deep" else
               "`baseline.npz` (the fitted parameters as arrays, read with "
               "`allow_pickle=False`; logistic regression: coefficients and intercept; "
               "gradient boosting: every tree's nodes)")
    return f"""# MMFusion model bundle: `{variant}`

{k} models, one per cross-validation fold{seeds} of the training run, each trained on that fold's
training split, with its checkpoint, threshold{' and temperature' if variant == 'mmfusion'
else ''} and probability recalibration (`scoring.json`, `recalibration`) chosen on the
fold's validation split. Research software: not a medical device,
not validated for clinical use.

## Use

```bash
mmfusion predict --bundle THIS_FOLDER --dicom NEW_DICOM_ROOT --clinical clinical.csv \\
    [--hematology hematology.csv] --out OUT [--workers 4]
```

`OUT/predictions.csv`: `patient_id, probability, uncertainty, decision, qc_warnings`
(+ `label` when the clinical table has `{info['label_column']}`); `OUT/exclusions.tsv`: one
row per patient that could not be scored, with the stage and the reason. The new patients
go through index → checks → convert → crop → radiomics with the settings in
`settings.json` (those of the training run), never with a current config file.

The tables need the columns the models were trained on (ID column
`{settings['cohort']['id_column']}`):

- clinical: {', '.join(f'`{c}`' for c in clinical) or 'none'}
- hematology: {', '.join(f'`{c}`' for c in hematology) or 'none (no table needed)'}

A missing column or a category the bundle does not know is refused (one line naming it);
an empty cell is imputed as in training (the fold's training median/mean) and reported in
`qc_warnings`.

## Ensemble of the {k} fold models

- probability: {info['ensemble']['probability']};
- uncertainty: {info['ensemble']['uncertainty']};
- decision: {info['ensemble']['decision']} = **{info['decision_threshold']:.4f}**.

Each fold model is applied with its own in-fold preprocessing (imputation, scaling,
radiomics selection fitted on that fold's training rows) and scored exactly as training
scored the fold's own patients (`mmfusion.train.scoring`): the diffusion noise is drawn
once from the fold's seed and shared by every patient (common random numbers, in
antithetic pairs), so a patient's score does not depend on its batch or on the other
patients scored with it, and a fold model gives its own test patients the probabilities
in its `predictions.csv`.

| fold | threshold (validation, Youden) | temperature |
|---|---|---|
{fold_rows}

## Contents

- `fold{{k}}/`: {weights}; `preprocessor.json` (fitted imputation, scaling, selected
  features, one-hot levels; JSON); `scoring.json` (threshold, temperature, model settings)
- `settings.json`: the settings of every stage (ROI regexes, conversion, crop, radiomics,
  tables, preprocessing, model); `radiomics_params.yaml`: the PyRadiomics params file
- `config.resolved.yaml`: the training run's whole configuration (it names the training
  data's paths); `feature_spec.json`: the cohort's feature columns
- `versions.json`: the training environment ({', '.join(f'{p} {v}' for p, v in
  versions.items())}); `mmfusion predict` logs every difference
- `manifest.json`: sha256 of every file; `mmfusion predict` refuses a bundle whose files
  changed, went missing or were added
"""
