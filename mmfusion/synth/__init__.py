"""Synthetic demo cohort: thorax CT phantoms with RTSTRUCTs and clinical/hematology tables."""

from mmfusion.synth.cohort import SynthSettings, generate_cohort, patient_phantom

__all__ = ["SynthSettings", "generate_cohort", "patient_phantom"]
