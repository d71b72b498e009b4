"""Features stage: per-patient image patches and radiomics, run by
`workflow/rules/features.smk` (rules `crop_patient`, `extract_radiomics`).

- `converted`: reads the convert stage's CT and masks.
- `patches`: crop settings, the patch record (`patches.npz`), patch grid and resampling.
- `crop`: cuts the tumour and node patches (`mmfusion crop`).
- `qc_picture`: the QC PNG of where each patch sits (`qc.png`).
- `radiomics`: PyRadiomics rows of GTV-T and GTV-N (`mmfusion radiomics`).
"""
