"""The training device and its numeric precision, decided once per process.

`resolve_device(train.device, model.graph_backend)` picks the device: `cpu`; `cuda`, which
needs a CUDA build of torch that sees a GPU, and with `graph_backend: dgl` also a CUDA build
of DGL (PyPI's `dgl` wheels are CPU-only and fail with "Device API cuda is not enabled" on
the first graph moved to the GPU; with `auto` or `torch` HGA's graph layer then runs in
plain torch on the GPU, `mmfusion.model.graph_backend`), else a `ConfigError` before any
training; or `auto`: CUDA when it can, else the CPU with one log line saying why (a
warning when a GPU is present but unusable, with the fix). `select_device` adds the
choice of one free GPU per process (`mmfusion.train.gpu_lock`). `describe_device` is the
line every training and feature-cache log starts with.

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
is float32-only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmfusion.errors import ConfigError
from mmfusion.model.graph_backend import dgl_cuda_status, dgl_status
from mmfusion.settings import check_choice

if TYPE_CHECKING:
    from mmfusion.model.mmfusion import MMFusionModel

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("off", "bf16", "fp16")
DGL_CUDA_FIX = ("install DGL's CUDA build for torch 2.2 + CUDA 12.1: `pip uninstall -y dgl && "
                "pip install dgl -f https://data.dgl.ai/wheels/torch-2.2/cu121/repo.html`, "
                "or use the conda environment envs/train.yaml (channel "
                "dglteam/label/th22_cu121)")
TORCH_CUDA_FIX = ("install torch's CUDA build: `pip install torch==2.2.1 --index-url "
                  "https://download.pytorch.org/whl/cu121`, or use envs/train.yaml")

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
    torch can use it, else the CPU with one log line saying why). DGL's build matters only
    for `model.graph_backend: dgl`: with `auto` or `torch` the graph layer runs in torch on
    the GPU where DGL cannot (`mmfusion.model.graph_backend`).

    Raises:
        ConfigError: `cuda` without a CUDA torch that sees a GPU, or with `graph_backend:
            dgl` and no CUDA DGL.
    """
    check_choice("train.device", name, DEVICES)
    if name == "cpu":
        return torch.device("cpu")
    torch_ok, why = torch_cuda_status()
    if torch_ok:
        dgl_ok, why = dgl_cuda_status() if graph_backend == "dgl" else (True, "")
        fix = (f"{DGL_CUDA_FIX}, or set model.graph_backend: auto (the graph layer in torch "
               "on the GPU)")
    else:
        dgl_ok, fix = False, TORCH_CUDA_FIX
    if torch_ok and dgl_ok:
        return torch.device("cuda")
    if name == "cuda":
        raise ConfigError(f"train.device is cuda but {why}",
                          fix=f"{fix}; or set train.device: auto (or cpu)")
    if torch_ok or _gpu_hardware_present():
        _log_once(logging.WARNING, f"train.device auto: training on the CPU because {why}; "
                                   f"to train on the GPU, {fix}")
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
        return torch.cuda.amp.GradScaler() if self.mode == "fp16" else None

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
