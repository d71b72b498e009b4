"""MMFusion: multi-modal fusion for lymph node metastasis diagnosis in oesophageal cancer."""

__version__ = "0.1.0"
