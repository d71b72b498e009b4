"""MMFusion: multi-modal fusion for lymph node metastasis diagnosis in oesophageal cancer."""

from mmfusion.dgl_compat import install_graphbolt_stand_in

__version__ = "0.1.0"

# Before anything imports DGL: PyPI's DGL 2.1.0 on a torch newer than 2.2.1 (dgl_compat).
install_graphbolt_stand_in()
