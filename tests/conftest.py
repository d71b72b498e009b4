"""Shared fixtures: a tiny synthetic cohort and paths to the read-only shared data."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from mmfusion.synth import SynthSettings, generate_cohort

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small but valid: 64 x 5.2 mm = 333 mm field of view, 32 slices x 5 mm.
TINY = SynthSettings(n_patients=3, seed=7, prevalence=0.5, matrix=64, n_slices=32,
                     pixel_spacing=5.2, slice_thickness=5.0)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shuffle-seed", type=int, default=None,
                     help="run the tests in a shuffled order (the modules shuffled, and the "
                          "tests within each module), drawn with this seed: shows that no "
                          "test depends on the order of the others (.ci/run does this)")


def shuffled(items: list, seed: int) -> list:
    """`items` (pytest items, or anything with a `module`-like key) with their module blocks
    shuffled and each block shuffled, deterministically for `seed`."""
    rng = random.Random(seed)
    blocks: dict[str, list] = {}
    for item in items:
        blocks.setdefault(str(getattr(item, "fspath", item)), []).append(item)
    order = list(blocks)
    rng.shuffle(order)
    out = []
    for key in order:
        block = blocks[key]
        rng.shuffle(block)
        out += block
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    seed = config.getoption("--shuffle-seed")
    if seed is not None:
        items[:] = shuffled(items, seed)


def require_tool(name: str) -> str:
    """Path of a Debian tool that .ci/run installs; skip (with the reason) where absent."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (CI installs it: see .ci/run)")
    return path


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-patient synthetic cohort written once per test session (read-only for tests)."""
    out = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(out, TINY, jobs=1, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def one_thread():
    """One torch thread for the test (tiny models: threads only add overhead and noise)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
