"""Which library runs HGA's graph layer (`model.graph_backend`: auto | dgl | torch).

- `dgl`: `dgl.nn.GATConv` / `GraphConv` on a `dgl.batch`-ed graph: the reference; needs a
  DGL that imports, and a CUDA build of DGL to run on a GPU.
- `torch`: the same layers in plain torch (`mmfusion.model.graph_torch`), batched and dense
  on any device; outputs and gradients equal DGL's (tests/test_graph_backends.py), and
  the parameters have DGL's names, so checkpoints and bundles move between the two.
- `auto` (default): DGL where it imports and can run on the model's device (any DGL on the
  CPU; a CUDA build on a GPU), with its version logged; otherwise `torch`, with one line
  saying why. So DGL stays the default wherever it works, and its absence (Python 3.13,
  newest torch) or its CPU-only PyPI build never keeps a model off the GPU.

Where the graph layer runs (`graph_device_for`): on the model's device, except `dgl` on a
device this DGL cannot run on (PyPI's CPU-only DGL on a GPU): the **hybrid** mode, in which
HGA's graph layer (graph + GATConv/GraphConv) stays on the CPU and the vertex features
cross to it and back every step (`mmfusion.model.hga.HGA`); everything else runs on the GPU.
"""

from __future__ import annotations

import functools
import logging

import torch

from mmfusion.errors import ConfigError
from mmfusion.settings import check_choice

log = logging.getLogger(__name__)

GRAPH_BACKENDS = ("auto", "dgl", "torch")
DGL_FIX = ("install DGL (Python 3.11 or 3.12: `pip install dgl==2.1.0`, PyPI's last Linux "
           "build, which mmfusion imports beside newer torch via mmfusion.dgl_compat), or set "
           "model.graph_backend: torch (the same maths in plain torch)")
_said: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.log(level, message)


@functools.lru_cache(maxsize=1)
def dgl_status() -> tuple[bool, str]:
    """(whether DGL imports, its version or why not)."""
    try:
        import dgl
    except Exception as err:  # noqa: BLE001 - any import failure means "no usable DGL"
        return False, f"{type(err).__name__}: {err}".splitlines()[0][:200]
    return True, str(dgl.__version__)


@functools.lru_cache(maxsize=1)
def dgl_cuda_status() -> tuple[bool, str]:
    """(whether DGL can run on CUDA, why not). Cheap: no graph moves, no CUDA context."""
    try:
        import dgl
        from dgl._ffi.function import get_global_func
        from dgl._ffi.runtime_ctypes import DGLContext
    except Exception as err:  # noqa: BLE001
        return False, f"DGL cannot be imported ({type(err).__name__}: {err})"
    if get_global_func("device_api.cuda", allow_missing=True) is None:
        return False, f"the installed DGL {dgl.__version__} is a CPU-only build"
    try:
        visible = bool(DGLContext(2, 0).exist)  # 2 = kDGLCUDA
    except Exception as err:  # noqa: BLE001
        return False, f"DGL {dgl.__version__} (CUDA build) fails to query the GPU: {err}"
    if not visible:
        return False, (f"DGL {dgl.__version__} is a CUDA build but sees no GPU (its CUDA "
                       "runtime may not match the driver or torch's CUDA)")
    return True, ""


def _dgl_runs_on(device_type: str) -> tuple[bool, str]:
    """(whether DGL can run on a device of `device_type`, why not)."""
    if device_type == "cpu":
        return True, ""
    if device_type == "cuda":
        return dgl_cuda_status()
    return False, f"DGL runs on the CPU and CUDA only, not on {device_type}"


def graph_device_for(backend: str, device: torch.device | str) -> tuple[torch.device, str]:
    """Where HGA's graph layer runs when the model is on `device`, and why: `device`,
    except DGL on a device it cannot run on (hybrid: the CPU)."""
    device = torch.device(device)
    if backend != "dgl":
        return device, f"the torch graph layers run on {device.type}"
    runs, reason = _dgl_runs_on(device.type)
    if runs:
        return device, f"DGL runs on {device.type}"
    return torch.device("cpu"), (f"hybrid: {reason}, so DGL's graph layer stays on the CPU "
                                 f"and the vertex features cross from {device.type} and back "
                                 "each step (the rest of the model runs on "
                                 f"{device.type}; model.graph_backend: auto would run the "
                                 f"torch graph layers on {device.type})")


def resolve_graph_backend(name: str, device_type: str = "cpu") -> tuple[str, str]:
    """`model.graph_backend` on a device of `device_type` -> (`dgl` or `torch`, why).

    Raises:
        ConfigError: `dgl` where DGL does not import.
    """
    check_choice("model.graph_backend", name, GRAPH_BACKENDS)
    if name == "torch":
        return "torch", "model.graph_backend: torch"
    ok, version = dgl_status()
    if name == "dgl":
        if not ok:
            raise ConfigError(f"model.graph_backend is dgl but DGL does not import ({version})",
                              fix=DGL_FIX)
        return "dgl", f"model.graph_backend: dgl (DGL {version})"
    if not ok:
        why = f"DGL does not import ({version})"
    else:
        runs, reason = _dgl_runs_on(device_type)
        if runs:
            _log_once(logging.INFO, f"graph backend: DGL {version} (model.graph_backend auto)")
            return "dgl", f"auto: DGL {version} imports and runs on {device_type}"
        why = f"DGL {version} cannot run on {device_type}: {reason}"
    _log_once(logging.WARNING, f"graph backend: torch, because {why} (model.graph_backend "
                               "auto; the same GATConv/GraphConv maths in plain torch)")
    return "torch", f"auto: {why}"
