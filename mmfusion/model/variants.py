"""The variants trained on every fold (paper Table 2) and the classical baselines.

Torch-free on purpose: the workflow reads these names when it parses its rules.
"""

from __future__ import annotations

# name -> (MMRL, HGA, CFD): which paper components the deep variant switches on
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "base1": (False, False, False),
    "base2": (True, False, False),
    "base3": (True, True, False),
    "mmfusion": (True, True, True),
}
BASELINES: tuple[str, ...] = ("logreg", "gbm")
