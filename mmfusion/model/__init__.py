"""MMFusion network components, one module per paper component; trained by the model
stage (`workflow/rules/model.smk`, through `mmfusion.train`).

`backbone` (3D ResNet, MedicalNet layout), `mmrl` (§2.2), `hga` (eq. 1), `cfd` (eqs. 2–4, 6),
`mmfusion` (variants base1/base2/base3/mmfusion, loss eq. 7), `baselines` (logreg, gbm),
`variants` (their names, torch-free for the workflow).
Import the submodules directly; this package import stays light (no DGL).
"""
