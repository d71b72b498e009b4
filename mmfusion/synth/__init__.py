"""Synthetic demo cohort: thorax CT phantoms with RTSTRUCTs and clinical/hematology tables.

Run by `workflow/rules/synth.smk` (rule `synth_cohort` = `mmfusion synth`) when the config
says `cohort.synthetic: true`. `cohort` (settings, generation), `latent` (label model),
`phantom` / `shapes` (the CT phantom), `dicom_writer` (CT series and RTSTRUCT files).
"""

from mmfusion.synth.cohort import SynthSettings, generate_cohort, patient_phantom

__all__ = ["SynthSettings", "generate_cohort", "patient_phantom"]
