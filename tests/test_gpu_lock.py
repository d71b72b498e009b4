"""One GPU per local job (`mmfusion.train.gpu_lock`), with fake device counts: no GPU needed."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mmfusion.train import gpu_lock
from mmfusion.train.gpu_lock import acquire_gpu, default_lock_dir, release_gpu, visible_devices

REPO = Path(__file__).resolve().parents[1]

# a child job: take a GPU among `count`, print its index, hold it until stdin closes
CHILD = """
import json, os, sys
sys.path.insert(0, {repo!r})
from mmfusion.train.gpu_lock import acquire_gpu
env = json.loads(sys.argv[3])
lease = acquire_gpu(count=int(sys.argv[1]), lock_dir=sys.argv[2], env=env, poll_s=0.05)
print(lease.index, lease.key, flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def fresh_lease():
    """Each test starts without a lease in this process, and gives back what it took."""
    release_gpu()
    yield
    release_gpu()


def hold(folder: Path, key: str) -> int:
    """Take device `key`'s lock as another job would (an open descriptor)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"gpu-{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def is_locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def child(count: int, folder: Path, env: str = "{}") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(count),
                             str(folder), env], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_takes_first_free_device_and_keeps_it(tmp_path):
    fd0 = hold(tmp_path, "0")
    lease = acquire_gpu(count=3, lock_dir=tmp_path, env={})
    assert (lease.index, lease.key) == (1, "1")
    assert lease.path == tmp_path / "gpu-1.lock" and is_locked(lease.path)
    assert acquire_gpu(count=3, lock_dir=tmp_path, env={}) is lease  # same in one process
    os.close(fd0)


def test_concurrent_processes_get_distinct_devices(tmp_path):
    procs = [child(3, tmp_path) for _ in range(3)]
    try:
        got = [p.stdout.readline().split() for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert sorted(int(i) for i, _ in got) == [0, 1, 2]


def test_sigkilled_holder_frees_its_device(tmp_path):
    proc = child(1, tmp_path)
    assert proc.stdout.readline().split() == ["0", "0"]
    assert is_locked(tmp_path / "gpu-0.lock")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    lease = acquire_gpu(count=1, lock_dir=tmp_path, env={}, timeout_s=5)
    assert lease.index == 0  # the kernel dropped the killed job's lock


def test_cuda_visible_devices_restrict_the_choice(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "2,5"}
    assert visible_devices(2, env) == ["2", "5"]
    fd = hold(tmp_path, "2")  # another job (e.g. with CUDA_VISIBLE_DEVICES unset) holds 2
    lease = acquire_gpu(count=2, lock_dir=tmp_path, env=env)
    assert (lease.index, lease.key) == (1, "5")  # cuda:1 of this process = device 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-2.lock", "gpu-5.lock"]
    os.close(fd)


def test_one_device_given_by_the_scheduler_is_used_without_lock(tmp_path):
    lease = acquire_gpu(count=1, lock_dir=tmp_path / "locks",
                        env={"CUDA_VISIBLE_DEVICES": "GPU-1234abcd", "SLURM_JOB_ID": "7"})
    assert (lease.index, lease.key, lease.path) == (0, "GPU-1234abcd", None)
    assert not (tmp_path / "locks").exists()


def test_all_busy_waits_then_takes_the_freed_device(tmp_path, caplog):
    fds = [hold(tmp_path, "0"), hold(tmp_path, "1")]
    threading.Timer(0.5, os.close, args=(fds[1],)).start()
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="mmfusion.train.gpu_lock"):
        lease = acquire_gpu(count=2, lock_dir=tmp_path, env={}, poll_s=0.05, timeout_s=20)
    assert lease.index == 1 and time.monotonic() - start >= 0.4
    waits = [r.getMessage() for r in caplog.records if "waiting for one to free" in r.message]
    assert len(waits) == 1 and "all 2 visible GPU(s) (0,1) are taken" in waits[0]
    os.close(fds[0])


def test_all_busy_times_out(tmp_path):
    fd = hold(tmp_path, "0")
    with pytest.raises(TimeoutError, match="stayed taken"):
        acquire_gpu(count=1, lock_dir=tmp_path, env={}, poll_s=0.05, timeout_s=0.3)
    assert gpu_lock._held is None
    os.close(fd)


def test_lock_dir_defaults():
    assert default_lock_dir({"MMFUSION_GPU_LOCK_DIR": "/x/y"}) == Path("/x/y")
    assert default_lock_dir({}).name == f"mmfusion-gpu-locks-{os.getuid()}"
    assert default_lock_dir({"SLURM_JOB_ID": "77"}).name.endswith("-slurm77")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        acquire_gpu(count=0, env={})
