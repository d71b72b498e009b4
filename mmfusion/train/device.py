"""The training device and its numeric precision, decided once per process.

`resolve_device(train.device, model.graph_backend)` picks the device: `cpu`; `cuda`, which
needs a CUDA build of torch that sees a GPU, else a `ConfigError` before any training; or
`auto`: CUDA whenever torch can use it, else the CPU with one log line saying why (a
warning when a GPU is present but unusable, with the fix). DGL's build never decides the
device: PyPI's `dgl` wheels are CPU-only, so on a GPU `graph_backend: auto` runs HGA's graph
layer in plain torch on the GPU, and `graph_backend: dgl` runs the hybrid mode (the graph
layer on the CPU, everything else on the GPU: `mmfusion.model.hga`), said in one log line
with the fix for a graph on the GPU too. `select_device` adds the choice of one free GPU
per process (`mmfusion.train.gpu_lock`). `describe_device` is the line every training and
feature-cache log starts with.

DGL's CUDA build is detected without touching the GPU: a CUDA build registers the global
function `device_api.cuda` in `libdgl`, a CPU build does not (this is the very lookup that
fails in a CPU build), and DGL's `exist` query of device 0 then confirms that this DGL's
CUDA runtime can see a GPU (a device attribute query; it creates no CUDA context).

`Precision` (config `train.amp`: off | bf16 | fp16) autocasts the 3D CNN backbones, which
do nearly all of the arithmetic; their feature maps go on in float32, so MMRL, the DGL
graph attention, the diffusion head, losses and metrics stay in float32. fp16 trains with
a `GradScaler`; bf16 has float32's range and needs none. On the CPU amp is off: it is
rarely faster there, oneDNN's bf16 conv3d backward (torch 2.2.1) gives NaN weight
gradients for small node patches, and the stem's CPU backward (`mmfusion.model.backbone`)
is float32-only. In the hybrid mode the graph layer's gradients are on the CPU, which
torch 2.2's GradScaler cannot unscale (its unscale kernel is CUDA-only): `MixedGradScaler`
unscales those in plain torch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmfusion.errors import ConfigError
from mmfusion.model.graph_backend import dgl_cuda_status, dgl_status, graph_device_for
from mmfusion.settings import check_choice

if TYPE_CHECKING:
    from mmfusion.model.mmfusion import MMFusionModel

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("off", "bf16", "fp16")
DGL_CUDA_FIX = ("PyPI has no CUDA build of DGL for the pip route's torch: leave "
                "model.graph_backend at auto (HGA's graph layer in torch on the GPU, the same "
                "maths) or keep dgl (the graph layer on the CPU, the rest on the GPU); for DGL "
                "itself on the GPU use the conda environment envs/train.yaml (torch 2.2.1 + "
                "DGL's CUDA build from channel dglteam/label/th22_cu121)")
TORCH_CUDA_FIX = ("install torch's CUDA build (PyPI's Linux x86_64 wheels are CUDA builds: "
                  "`pip install torch==2.10.0`, CUDA 12.8), or use envs/train.yaml")

_said: set[str] = set()  # messages already logged by this process


def _log_once(level: int, message: str) -> None:
    """Log `message` the first time only (the device is resolved more than once a run)."""
    if message not in _said:
        _said.add(message)
        log.log(level, message)


def _dgl_version() -> str:
    ok, version = dgl_status()
    return version if ok else f"not importable ({version.split(':')[0]})"


def _gpu_hardware_present() -> bool:
    """An NVIDIA driver is loaded (its device node exists), whatever torch can use."""
    return Path("/dev/nvidiactl").exists()


def torch_cuda_status() -> tuple[bool, str]:
    """(whether torch can run on CUDA, why not)."""
    if torch.version.cuda is None and not torch.version.hip:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return False, (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
                       f"(CUDA_VISIBLE_DEVICES={_visible_env()})")
    return True, ""


def _visible_env() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset" if value is None else repr(value)


def resolve_device(name: str, graph_backend: str = "auto") -> torch.device:
    """`train.device` -> the device: `cpu`; `cuda` (or `ConfigError`); `auto` (CUDA when
    torch can use it, else the CPU with one log line saying why). DGL's build never
    matters: with `graph_backend: dgl` and a DGL without CUDA the graph layer stays on the
    CPU (hybrid, one log line), with `auto` or `torch` it runs in torch on the GPU
    (`mmfusion.model.graph_backend`).

    Raises:
        ConfigError: `cuda` without a CUDA torch that sees a GPU.
    """
    check_choice("train.device", name, DEVICES)
    if name == "cpu":
        return torch.device("cpu")
    torch_ok, why = torch_cuda_status()
    if torch_ok:
        if graph_backend == "dgl":
            dgl_ok, dgl_why = dgl_cuda_status()
            if not dgl_ok:
                _log_once(logging.INFO, f"train.device {name}: the model on the GPU, DGL's "
                                        f"graph layer on the CPU (hybrid) because {dgl_why}; "
                                        f"for the graph on the GPU too, {DGL_CUDA_FIX}, or "
                                        "set model.graph_backend: auto (the graph layer in "
                                        "torch on the GPU)")
        return torch.device("cuda")
    if name == "cuda":
        raise ConfigError(f"train.device is cuda but {why}",
                          fix=f"{TORCH_CUDA_FIX}; or set train.device: auto (or cpu)")
    if _gpu_hardware_present():
        _log_once(logging.WARNING, f"train.device auto: training on the CPU because {why}; "
                                   f"to train on the GPU, {TORCH_CUDA_FIX}")
    else:
        _log_once(logging.INFO, f"train.device auto: training on the CPU ({why})")
    return torch.device("cpu")


def select_device(name: str, graph_backend: str = "auto",
                  **lock_options: object) -> torch.device:
    """`resolve_device`, then for CUDA one free GPU for this process (held until it exits:
    `mmfusion.train.gpu_lock.acquire_gpu`, which takes `lock_options`), made the current
    CUDA device. Calling it again in the same process returns the same device."""
    device = resolve_device(name, graph_backend)
    if device.type != "cuda":
        return device
    from mmfusion.train.gpu_lock import acquire_gpu

    lease = acquire_gpu(**lock_options)  # type: ignore[arg-type]
    torch.cuda.set_device(lease.index)
    return torch.device("cuda", lease.index)


def describe_device(device: torch.device) -> str:
    """One line: device, GPU name, torch and its CUDA build, DGL and whether it has CUDA,
    CUDA_VISIBLE_DEVICES."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        where = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    else:
        where = str(device)
    dgl_ok, _ = dgl_cuda_status()
    return (f"device {where}; torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda or 'none'}); dgl {_dgl_version()} (CUDA: "
            f"{'yes' if dgl_ok else 'no'}); CUDA_VISIBLE_DEVICES={_visible_env()}")


def graph_placement(model: MMFusionModel, device: torch.device) -> dict[str, str | None]:
    """`graph_device` (where HGA's graph layer ran: the CPU in the hybrid mode) and
    `graph_device_reason`, as metrics.json records them; None without a graph."""
    if model.graph_backend is None:
        return {"graph_device": None, "graph_device_reason": model.graph_backend_reason}
    home = model.hga.graph_device
    if model.hga.pinned_graph_device is not None:
        why = f"pinned to {home} (HGA.pin_graph_layer)"
    else:
        why = graph_device_for(model.graph_backend, device)[1]
    return {"graph_device": str(home), "graph_device_reason": why}


# ---- mixed precision ------------------------------------------------------------------
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """The effective `train.amp` mode on `device_type` (`off` runs exactly as without amp)."""

    mode: str = "off"
    device_type: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.mode)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """`torch.autocast` at this precision, or nothing when amp is off."""
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def scaler(self) -> torch.cuda.amp.GradScaler | None:
        """A gradient scaler for fp16 (its small range underflows gradients), else None."""
        return MixedGradScaler() if self.mode == "fp16" else None

    def image_maps(self, model: MMFusionModel, batch: Mapping[str, torch.Tensor]
                   ) -> Mapping[str, torch.Tensor]:
        """`batch` with the backbones' feature maps computed under autocast and given back
        in float32 (the model's forward then skips its backbones). Unchanged when amp is
        off or the batch already carries maps (frozen backbone)."""
        if not self.enabled or "tumour_fmap" in batch:
            return batch
        with self.autocast():
            maps = model.encode_images(batch)
        return {**batch, **{key: value.float() for key, value in maps.items()}}


def precision_for(amp: str, device: torch.device) -> Precision:
    """`train.amp` on `device`: off on the CPU (one log line when amp was asked for).

    Raises:
        ConfigError: an unknown mode, or bf16 on a GPU without bfloat16 support.
    """
    check_choice("train.amp", amp, AMP_MODES)
    if amp == "off":
        return Precision()
    if device.type != "cuda":
        _log_once(logging.INFO, f"train.amp {amp} is ignored on the CPU: training in "
                                "float32")
        return Precision()
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.amp is bf16 but this GPU has no bfloat16 support",
                          fix="set train.amp: fp16 (or off)")
    return Precision(amp, "cuda")


@functools.lru_cache(maxsize=1)
def cpu_unscale_supported() -> bool:
    """Whether this torch has a CPU kernel of GradScaler's unscale (torch >= 2.3 does)."""
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(
            [torch.ones(1)], torch.zeros(()), torch.ones(()))
    except (NotImplementedError, RuntimeError):
        return False
    return True


class MixedGradScaler(torch.cuda.amp.GradScaler):
    """torch's fp16 `GradScaler`, also for gradients on the CPU (HGA's graph layer in the
    hybrid mode) where this torch's unscale kernel is CUDA-only: those are checked for
    inf/NaN and unscaled in plain torch, and their found-inf flag joins the others (a step
    is skipped when any device overflowed, as for several GPUs)."""

    def _unscale_grads_(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor,
                        found_inf: torch.Tensor, allow_fp16: bool
                        ) -> dict[torch.device, torch.Tensor]:
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.device.type == "cpu"]
        if not params or cpu_unscale_supported():
            return super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        grads = [p.grad for p in params]
        others = any(p.grad is not None and p.grad.device.type != "cpu"
                     for group in optimizer.param_groups for p in group["params"])
        per_device: dict[torch.device, torch.Tensor] = {}
        if others:
            for p in params:  # hidden from torch's CUDA-only unscale
                p.grad = None
            try:
                per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf,
                                                     allow_fp16)
            finally:
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
        cpu_inf = torch.zeros((), dtype=torch.float32)
        cpu_inv = inv_scale.detach().to("cpu", torch.float32)
        with torch.no_grad():
            for g in grads:
                if g.dtype == torch.float16 and not allow_fp16:
                    raise ValueError("Attempting to unscale FP16 gradients.")
                cpu_inf = torch.maximum(cpu_inf, (~torch.isfinite(g)).any().float())
                g.mul_(cpu_inv.to(g.dtype))
        per_device[torch.device("cpu")] = cpu_inf
        return per_device
