"""One GPU per local job: an exclusive lock per visible device.

When several training (or feature-cache) processes of one user start together on one
server (Snakemake with `--resources gpu=N` runs up to N GPU jobs at once), each must take
a different GPU. `acquire_gpu` tries the visible devices in order and takes the first whose
lock it gets: an exclusive, non-blocking `fcntl.flock` on the file `gpu-<id>.lock` in the
lock directory (`$MMFUSION_GPU_LOCK_DIR`, else `/tmp/mmfusion-gpu-locks-<uid>`, with
`-slurm<job id>` appended inside a SLURM job). When all are taken it logs so once and polls
until one frees. The lock is held by an open file descriptor kept for the rest of the
process, so the kernel releases it when the process ends, however it ends (also SIGKILL or
an out-of-memory kill); a stale lock file left behind locks nothing.

Design: the process keeps all visible devices and uses `torch.device("cuda", i)`, made the
current device (`torch.cuda.set_device`, in `mmfusion.train.device.select_device`), rather
than rewriting `CUDA_VISIBLE_DEVICES`: that would only work before anything initialises
CUDA (`torch.cuda.is_available()` already does), an ordering too easy to break.

Which devices: `CUDA_VISIBLE_DEVICES` when set (by the user or a scheduler) — its entries,
as many as CUDA counts, are the candidates and name the lock files (indices, or UUIDs when
given as UUIDs), so jobs with different `CUDA_VISIBLE_DEVICES` on one server still exclude
each other by physical index; unset, devices 0..count-1. When `CUDA_VISIBLE_DEVICES` names
exactly one device (SLURM's `--gres=gpu:1`, or a user's choice) that device is used
without a lock: the scheduler already made it this job's own, and under SLURM's device
cgroups every job calls its GPU "0", so a lock by that name would wrongly serialise jobs.
Limits: the locks coordinate the processes of one user on one machine that use this
module; they do not see other programs on the GPU.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "MMFUSION_GPU_LOCK_DIR"


@dataclass(frozen=True)
class GpuLease:
    """The GPU this process holds: its CUDA ordinal among the visible devices, the
    `CUDA_VISIBLE_DEVICES` entry (or index) naming it, the lock file (None: no lock taken)
    and the open descriptor holding the lock (kept for the process's lifetime)."""

    index: int
    key: str
    path: Path | None
    fd: int | None


_held: GpuLease | None = None  # this process's lease; released by the kernel at exit


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$MMFUSION_GPU_LOCK_DIR`, else `/tmp/mmfusion-gpu-locks-<uid>[-slurm<job>]`."""
    env = os.environ if env is None else env
    if env.get(LOCK_DIR_ENV):
        return Path(env[LOCK_DIR_ENV])
    job = env.get("SLURM_JOB_ID")
    suffix = f"-slurm{job}" if job else ""
    return Path("/tmp") / f"mmfusion-gpu-locks-{os.getuid()}{suffix}"


def visible_devices(count: int, env: Mapping[str, str] | None = None) -> list[str]:
    """Names of the `count` devices CUDA numbers 0..count-1: the first `count` entries of
    `CUDA_VISIBLE_DEVICES` when set, else the indices themselves."""
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in value.split(",") if e.strip()]
    return entries[:count]


def _lock_name(key: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".lock"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None when taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    os.ftruncate(fd, 0)  # who holds it, for people looking at the folder
    os.write(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode())
    return fd


def acquire_gpu(*, count: int | None = None, lock_dir: str | os.PathLike[str] | None = None,
                poll_s: float = 5.0, timeout_s: float | None = None,
                env: Mapping[str, str] | None = None) -> GpuLease:
    """Take a free visible GPU for this process (the same one on later calls).

    Args:
        count: number of devices CUDA sees (default `torch.cuda.device_count()`;
            injectable so tests run without a GPU).
        lock_dir: folder of the lock files (default `default_lock_dir()`).
        poll_s: seconds between tries while every device is taken.
        timeout_s: give up after this long (None: wait as long as it takes).
        env: the environment to read (default `os.environ`).

    Raises:
        RuntimeError: no visible device.
        TimeoutError: none freed within `timeout_s`.
    """
    global _held
    if _held is not None:
        return _held
    if count is None:
        import torch

        count = torch.cuda.device_count()
    keys = visible_devices(count, env)
    if not keys:
        raise RuntimeError("no CUDA device is visible to this process")
    env_map = os.environ if env is None else env
    if len(keys) == 1 and env_map.get("CUDA_VISIBLE_DEVICES") is not None:
        _held = GpuLease(0, keys[0], None, None)
        log.info("GPU: cuda:0 (CUDA_VISIBLE_DEVICES=%s, chosen by the user or scheduler; "
                 "no lock needed)", keys[0])
        return _held
    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir(env)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    waiting = False
    while True:
        for index, key in enumerate(keys):
            path = folder / _lock_name(key)
            fd = _try_lock(path)
            if fd is not None:
                _held = GpuLease(index, key, path, fd)
                log.info("GPU: cuda:%d (device %s) taken for this job, lock %s%s", index,
                         key, path, f" after waiting {time.monotonic() - start:.0f} s"
                         if waiting else "")
                return _held
        if timeout_s is not None and time.monotonic() - start >= timeout_s:
            raise TimeoutError(f"all {len(keys)} visible GPUs stayed taken for {timeout_s} s "
                               f"(locks in {folder})")
        if not waiting:
            log.warning("GPU: all %d visible GPU(s) (%s) are taken by other mmfusion jobs "
                        "(locks in %s); waiting for one to free (polling every %g s)",
                        len(keys), ",".join(keys), folder, poll_s)
            waiting = True
        time.sleep(poll_s)


def release_gpu() -> None:
    """Give the lease back now (the kernel does it at exit anyway; for tests and tools)."""
    global _held
    if _held is not None and _held.fd is not None:
        os.close(_held.fd)  # closing the last descriptor drops the flock
    _held = None
