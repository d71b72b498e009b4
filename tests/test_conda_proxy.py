"""The conda envs proven by proxy (workflow/scripts/conda_proxy.py).

The mapping checker (envs/pip-equivalents.yaml against envs/*.yaml and the imports of the
code each env's rules run) always runs: it is pure YAML + AST. The full proxy (a venv of
the PyPI equivalents per env, then every rule of that env on a tiny cohort) runs only with
MMFUSION_CONDA_PROXY=1, as CI sets it: it builds venvs of several GB.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"
SCRIPT = SCRIPTS / "conda_proxy.py"
MAPPING = REPO / "envs" / "pip-equivalents.yaml"


def _load_script():
    """The script's module, imported as the command line does: its dir first on sys.path
    (it imports its sibling modules conda_proxy_*.py)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("conda_proxy")


cp = _load_script()


@pytest.fixture
def env_copy(tmp_path: Path) -> Path:
    """envs/*.yaml and the mapping, copied where a test may break them."""
    for path in (REPO / "envs").glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _check(folder: Path) -> list[str]:
    return cp.run_check(folder / MAPPING.name, folder).problems


def _add_dependency(env_file: Path, line: str) -> None:
    data = yaml.safe_load(env_file.read_text())
    deps = data["dependencies"]
    at = next((i for i, d in enumerate(deps) if d == "pip"), len(deps))
    deps.insert(at, line)
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))


def _drop_dependency(env_file: Path, line: str) -> None:
    data = yaml.safe_load(env_file.read_text())
    data["dependencies"].remove(line)
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))


def _mapping(folder: Path) -> dict:
    return yaml.safe_load((folder / MAPPING.name).read_text())


def _write_mapping(folder: Path, mapping: dict) -> None:
    (folder / MAPPING.name).write_text(yaml.safe_dump(mapping, sort_keys=False))


def test_mapping_covers_every_env_file_exactly() -> None:
    """The real env files: mapped line for line, every needed module provided, no
    unexplained extra package (the message says what to change)."""
    result = cp.run_check()
    assert result.problems == [], "\n".join(result.problems)
    assert set(result.envs) == {"preprocess", "train"}


def test_check_command_line_runs_from_any_folder(tmp_path: Path) -> None:
    """`python workflow/scripts/conda_proxy.py check`, as README and CI call it, finds its
    sibling modules whatever the working directory."""
    res = subprocess.run([sys.executable, str(SCRIPT), "check"], cwd=tmp_path, text=True,
                         capture_output=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.rstrip().endswith("conda proxy check passed"), res.stdout[-2000:]


def test_copied_env_files_check_like_the_real_ones(env_copy: Path) -> None:
    assert _check(env_copy) == cp.run_check().problems


def test_checker_fails_when_an_env_file_gains_a_package(env_copy: Path) -> None:
    before = set(_check(env_copy))
    _add_dependency(env_copy / "train.yaml", "requests >=2")
    new = set(_check(env_copy)) - before
    assert any("'requests >=2'" in p and "does not cover" in p for p in new), new


def test_checker_fails_when_an_env_file_loses_or_respecs_a_package(env_copy: Path) -> None:
    before = set(_check(env_copy))
    _drop_dependency(env_copy / "preprocess.yaml", "pydicom >=3")
    text = (env_copy / "train.yaml").read_text().replace("numpy >=1.24,<2", "numpy >=1.26,<2")
    (env_copy / "train.yaml").write_text(text)
    new = set(_check(env_copy)) - before
    assert any("'pydicom >=3'" in p and "does not have" in p for p in new), new
    assert any("'numpy >=1.26,<2'" in p and "spec changed" in p for p in new), new
    # and pydicom, no longer in the preprocess env, is still imported by its rules' code
    assert any(p.startswith("preprocess: MISSING: module 'pydicom'") for p in new), new


def test_checker_fails_on_an_unexplained_extra_package(env_copy: Path) -> None:
    before = set(_check(env_copy))
    _add_dependency(env_copy / "preprocess.yaml", "requests >=2")
    mapping = _mapping(env_copy)
    mapping["preprocess"]["packages"]["requests >=2"] = {"pypi": "requests>=2",
                                                         "imports": ["requests"]}
    _write_mapping(env_copy, mapping)
    new = set(_check(env_copy)) - before
    assert any("EXTRA: 'requests >=2'" in p for p in new), new
    # a reason makes it an allowed indirect need
    mapping["preprocess"]["packages"]["requests >=2"]["indirect"] = "needed by X"
    _write_mapping(env_copy, mapping)
    assert set(_check(env_copy)) == before


def test_checker_fails_on_a_pypi_spec_outside_the_conda_spec(env_copy: Path) -> None:
    before = set(_check(env_copy))
    mapping = _mapping(env_copy)
    mapping["train"]["packages"]["dgl >=2.1,<2.4"]["pypi"] = "dgl==2.4.0"
    mapping["train"]["packages"]["pandas >=2.0"]["pypi"] = "pandas>=1.5"
    _write_mapping(env_copy, mapping)
    new = set(_check(env_copy)) - before
    assert any("dgl==2.4.0 lies outside" in p for p in new), new
    assert any("'pandas>=1.5' is neither the conda spec" in p for p in new), new


def test_checker_fails_when_a_rule_names_an_unmapped_env(env_copy: Path) -> None:
    before = set(_check(env_copy))
    mapping = _mapping(env_copy)
    del mapping["train"]
    _write_mapping(env_copy, mapping)
    new = set(_check(env_copy)) - before
    assert any("train.yaml: an env file with no section" in p for p in new), new
    assert any("use env 'train', which the mapping does not cover" in p for p in new), new


def test_imports_are_found_per_env() -> None:
    result = cp.run_check()
    pre, train = result.needed["preprocess"], result.needed["train"]
    assert {"pydicom", "radiomics", "SimpleITK", "numpy", "yaml"} <= set(pre)
    assert {"torch", "dgl", "sklearn", "matplotlib"} <= set(train)
    # the CLI imports every command module, but the handlers' heavy imports are
    # function-local and TYPE_CHECKING blocks never run: no torch for preprocessing
    assert "torch" not in pre and "dgl" not in pre
    commands = {r.command for r in result.rules if r.env == "train"}
    assert {"train cache", "train features", "train fold", "report"} <= commands


@pytest.mark.parametrize(("conda", "pep440"), [
    ("=3.11", "==3.11.*"), (">=1.24,<2", ">=1.24,<2"), ("", ""), ("=0.7.1", "==0.7.1.*"),
])
def test_conda_specs_translate_to_pep440(conda: str, pep440: str) -> None:
    assert cp.conda_to_pep440(conda) == pep440


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("2.1.0", ">=2.1,<2.4", True), ("2.4.0", ">=2.1,<2.4", False),
    ("2.2.1+cu121", "==2.2.1.*", True), ("3.11.7", "==3.11.*", True),
    ("3.12.0", "==3.11.*", False), ("1.26.4", ">=1.24,<2", True), ("2.0.0", ">=1.24,<2", False),
    ("65.5.0", "<70", True),
])
def test_versions_are_checked_against_specs(version: str, spec: str, ok: bool) -> None:
    assert cp.satisfies(version, spec) is ok


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MMFUSION_CONDA_PROXY") != "1",
                    reason="the full conda proxy (venvs of several GB + the workflow on a "
                    "tiny cohort, ~6 min) runs only with MMFUSION_CONDA_PROXY=1, as CI sets it")
def test_full_conda_proxy() -> None:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(SCRIPT), "run"], cwd=REPO, text=True,
                         capture_output=True, timeout=1500)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-8000:]
    assert "conda proxy passed for preprocess, train" in out
    print(f"conda proxy: {time.monotonic() - t0:.0f} s")
