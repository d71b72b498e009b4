"""`train.deterministic`: deterministic kernels, and what a run recorded about them.

On: `CUBLAS_WORKSPACE_CONFIG=:4096:8` (cuBLAS needs it for reproducible GEMMs; it must be
in the environment before the CUDA context starts, so `mmfusion train fold` calls
`apply_determinism` first thing), `torch.use_deterministic_algorithms(True)` (an op without
a deterministic kernel then raises instead of silently varying), `cudnn.deterministic` and
no cuDNN autotuning. Off (the default): torch's defaults, which on a GPU pick the fastest
kernels, some of them (atomic-add reductions, scatter, autotuned convolutions) varying from
run to run. On the CPU the kernels used here are deterministic for a fixed thread count
either way.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

CUBLAS_KEY = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_VALUE = ":4096:8"


def apply_determinism(on: bool) -> dict[str, Any]:
    """Switch deterministic kernels on (or back to torch's defaults); returns the state
    now in force, for metrics.json (`settings.determinism`)."""
    import torch

    late = False
    if on:
        late = bool(torch.cuda.is_available() and torch.cuda.is_initialized()
                    and os.environ.get(CUBLAS_KEY) is None)
        os.environ.setdefault(CUBLAS_KEY, CUBLAS_VALUE)
        if late:
            log.warning("train.deterministic: CUDA was initialised before %s was set; "
                        "cuBLAS may still pick non-deterministic workspaces", CUBLAS_KEY)
    torch.use_deterministic_algorithms(bool(on))
    torch.backends.cudnn.deterministic = bool(on)
    if on:
        torch.backends.cudnn.benchmark = False
    return {"requested": bool(on),
            "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cublas_workspace_config": os.environ.get(CUBLAS_KEY),
            "cublas_set_after_cuda_init": late}
