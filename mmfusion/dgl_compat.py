"""DGL 2.1.0 (PyPI's last Linux build) beside a torch it has no GraphBolt library for.

`import dgl` imports `dgl.graphbolt` unconditionally (through `dgl.distributed`), and
GraphBolt loads `libgraphbolt_pytorch_<torch version>.so`, which the wheel ships for torch
2.0.0-2.2.1 only, so on any newer torch `import dgl` fails. GraphBolt is DGL's sampling and
data-loading engine; what mmfusion uses (`dgl.graph`, `dgl.batch`, `dgl.nn.GATConv` /
`GraphConv`) never touches it, and DGL's other torch library (tensoradapter) is optional by
design. So, before DGL is first imported, a stand-in `dgl.graphbolt` module is registered
when (and only when) the installed DGL has no GraphBolt library for the installed torch:
every attribute of it raises an AttributeError that says why. Measured with torch 2.10.0
and 2.14.1 on Python 3.11 and 3.12: `tests/test_graph_backends.py` (DGL vs the torch
layers, 129 cases) and the rest of the suite pass. Torch-free: the versions are read from
the installed packages' metadata.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from importlib.metadata import PackageNotFoundError, version

STUB_DOC = "stand-in for dgl.graphbolt: DGL ships no GraphBolt library for torch {}"


def graphbolt_library(dgl_dir: str, torch_version: str) -> str:
    """Where DGL looks for its GraphBolt library for `torch_version` (no local suffix)."""
    return os.path.join(dgl_dir, "graphbolt", f"libgraphbolt_pytorch_{torch_version}.so")


def install_graphbolt_stand_in() -> bool:
    """Register the stand-in `dgl.graphbolt` when DGL is installed, not yet imported, and
    has no GraphBolt library for the installed torch. Returns whether it did."""
    if "dgl" in sys.modules or "dgl.graphbolt" in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec("dgl")
        torch_version = version("torch").split("+")[0]
    except (ImportError, ValueError, PackageNotFoundError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    if os.path.exists(graphbolt_library(spec.submodule_search_locations[0], torch_version)):
        return False
    stub = types.ModuleType("dgl.graphbolt", STUB_DOC.format(torch_version))

    def __getattr__(name: str):  # noqa: N807 - a module-level __getattr__
        raise AttributeError(f"dgl.graphbolt.{name}: DGL has no GraphBolt library for torch "
                             f"{torch_version} (mmfusion.dgl_compat registered a stand-in; "
                             "mmfusion never uses GraphBolt)")

    stub.__getattr__ = __getattr__  # type: ignore[method-assign]
    stub.__spec__ = importlib.machinery.ModuleSpec("dgl.graphbolt", None)
    sys.modules["dgl.graphbolt"] = stub
    return True
