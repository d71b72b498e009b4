"""The variants trained on every fold (paper Tables 2 and 3) and the classical baselines.

Torch-free on purpose: the workflow reads these names when it parses its rules.
"""

from __future__ import annotations

# name -> (MMRL, HGA, CFD): which paper components the deep variant switches on
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "base1": (False, False, False),
    "base2": (True, False, False),
    "base3": (True, True, False),
    "mmfusion": (True, True, True),
    # paper Table 3 (and one more ablation): MMFusion with exactly one component changed
    "mmfusion_gcn": (True, True, True),
    "mmfusion_nomask": (True, True, True),
    "mmfusion_nonodeflags": (True, True, True),
}
BASELINES: tuple[str, ...] = ("logreg", "gbm")

# Table 3 ablations: name -> (the component changed, its setting in the ablation). The
# model reads the change from `ABLATION_OVERRIDES` (mmfusion.model.mmfusion.ModelConfig);
# everything else (data, folds, training rules, seeds) is mmfusion's.
TABLE3: dict[str, tuple[str, str]] = {
    "mmfusion_gcn": ("GNN", "GCN (dgl.nn.GraphConv) instead of GAT"),
    "mmfusion_nomask": ("MMRL", "w/o relation masking"),
    "mmfusion_nonodeflags": ("node flags", "w/o node-presence flags in the node embedding"),
}
# what each ablation changes in the model (ModelConfig properties of the same names)
ABLATION_OVERRIDES: dict[str, dict[str, object]] = {
    "mmfusion_gcn": {"graph_conv": "gcn"},
    "mmfusion_nomask": {"relation_mask": False},
    "mmfusion_nonodeflags": {"node_flags": False},
}
TABLE3_REFERENCE = "mmfusion"
