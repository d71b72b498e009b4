#!/usr/bin/env python3
"""The conda envs (envs/*.yaml) proven by proxy: no conda channel is reachable here, so each
env is stood in for by a plain venv of the PyPI equivalents that envs/pip-equivalents.yaml
maps its packages to.

    python workflow/scripts/conda_proxy.py check   # fast: pure YAML + AST, installs nothing
    python workflow/scripts/conda_proxy.py run     # minutes: venvs + the workflow

`check` fails when
  - an env file gains, loses or re-specs a package that the mapping does not cover exactly
    (both directions), an env file has no mapping or a mapping no env file, or a rule's
    `conda:` names an env the mapping does not know;
  - a PyPI spec is not the conda spec (conda `=X` is X.*) and is not a pin inside it;
  - a third-party module imported by the code that an env's rules run is provided by no
    package of that env (static: the AST of mmfusion/commands/<cmd>.py for every command of
    the env's rules, following mmfusion.* imports transitively, function-local ones
    included, plus what `python -m mmfusion` imports at start-up);
  - a package of an env is imported by none of those modules and does not say why
    (`indirect`), or an allow-list entry is stale.
`run` then, per env, builds a fresh venv .proxy-envs/<env> with exactly the mapped PyPI
specs, imports every needed module there (and checks that packages_distributions gives
each to the package the mapping says), checks each installed version against the conda
spec, and runs every rule of the env on a tiny synthetic cohort (12 patients; a few of them
copied as the external cohort of bundle.smk) with the main venv's snakemake and that venv's
bin first on PATH: preprocess rules first, then the train rules (Snakemake reruns nothing
already done), then cache_features with model.freeze_backbone. A `.pth` probe in each proxy
venv records every python started there; each job of each phase must be matched by a
record of the phase's venv with the job's command, no python may see the main venv, and
every rule of each env must have run.

Downloaded wheels are kept in ~/.cache/mmfusion-conda-proxy/wheels/<env> (the mirror's
answers are not cacheable: without it every run fetches ~3 GB of torch + CUDA wheels); pip
still resolves against the index each run. `--no-wheelhouse` installs straight from it.

Stdlib + PyYAML; run it with the main venv's python (its snakemake runs the workflow).
"""

from __future__ import annotations

import argparse
import ast
import collections
import concurrent.futures
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "mmfusion"
DEFAULT_MAPPING = REPO / "envs" / "pip-equivalents.yaml"
PROXY_ROOT = REPO / ".proxy-envs"
# Rules of an env run in this order; later envs' rules need earlier envs' outputs.
ENV_ORDER = ("preprocess", "train")
TINY_SYNTH = {"n_patients": 12, "seed": 3, "prevalence": 0.5, "matrix": 64, "n_slices": 32,
              "pixel_spacing": 5.2, "slice_thickness": 5.0}
PROBE_VAR = "MMFUSION_PROXY_PROBE"
# What the preprocess phase asks for (under results/); the crops follow per patient.
PREPROCESS_TARGETS = ("cohort/table.tsv", "cohort/folds.tsv", "qc/preflight_summary.json",
                      "qc/convert_summary.tsv")


class ProxyError(Exception):
    """A finding that makes the proxy fail."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------
# Specs: conda match specs -> PEP 440, and a small version comparison (release numbers).

_CLAUSE = re.compile(r"^(==|!=|>=|<=|>|<|=|~=)?\s*([0-9][0-9A-Za-z.*+!_-]*)$")


def split_dependency(line: str) -> tuple[str, str]:
    """'numpy >=1.24,<2' -> ('numpy', '>=1.24,<2'); 'pkg==1.0' -> ('pkg', '==1.0')."""
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", line.strip())
    if not m:
        raise ProxyError(f"cannot read dependency {line!r}")
    return m.group(1), m.group(2).replace(" ", "")


def conda_to_pep440(spec: str) -> str:
    """Conda's version spec as PEP 440: `=X` and a bare `X` mean X.* (the release prefix)."""
    if not spec:
        return ""
    if "|" in spec:
        raise ProxyError(f"conda spec {spec!r} has an alternative (|): not translated")
    out = []
    for clause in spec.split(","):
        m = _CLAUSE.match(clause)
        if not m:
            raise ProxyError(f"cannot read version clause {clause!r}")
        op, ver = m.group(1) or "", m.group(2)
        if op in ("=", ""):
            out.append(f"=={ver.rstrip('.*')}.*")
        else:
            out.append(f"{op}{ver}")
    return ",".join(out)


def _release(version: str) -> tuple[int, ...]:
    m = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    if not m:
        raise ProxyError(f"cannot read version {version!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def satisfies(version: str, pep440: str) -> bool:
    """Whether `version` (release numbers only) meets every clause of a PEP 440 spec."""
    rel = _release(version)
    for clause in filter(None, pep440.split(",")):
        m = re.match(r"^(==|!=|>=|<=|>|<|~=)(.+)$", clause)
        if not m:
            raise ProxyError(f"cannot read PEP 440 clause {clause!r}")
        op, ver = m.groups()
        if ver.endswith(".*"):
            prefix = _release(ver[:-2])
            hit = rel[: len(prefix)] == prefix
            if (op == "==" and not hit) or (op == "!=" and hit):
                return False
            continue
        c = _cmp(rel, _release(ver))
        ok = {"==": c == 0, "!=": c != 0, ">=": c >= 0, "<=": c <= 0, ">": c > 0, "<": c < 0,
              "~=": c >= 0 and rel[: len(_release(ver)) - 1] == _release(ver)[:-1]}[op]
        if not ok:
            return False
    return True


def normalise_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------
# Env files and the mapping.

def env_lines(path: Path) -> list[str]:
    """Dependency lines of a conda env file; `pip:` entries as 'pip: <requirement>'."""
    data = yaml.safe_load(path.read_text())
    lines = []
    for dep in data.get("dependencies") or []:
        if isinstance(dep, dict):
            for key, items in dep.items():
                if key != "pip":
                    raise ProxyError(f"{path}: unknown nested dependency list {key!r}")
                lines += [f"pip: {' '.join(str(i).split())}" for i in items or []]
        else:
            lines.append(" ".join(str(dep).split()))
    return lines


@dataclass
class Entry:
    line: str            # the env file's line, as the mapping key
    conda_name: str
    conda_spec: str      # PEP 440 form of the env file's spec
    pypi: str | None
    pypi_name: str | None
    pypi_spec: str
    imports: list[str]
    indirect: str | None
    narrowed: str | None


@dataclass
class EnvMap:
    name: str
    file: Path
    entries: list[Entry]
    not_needed: dict[str, str]

    def pypi_requirements(self) -> list[str]:
        return [e.pypi for e in self.entries if e.pypi]

    def provider(self, module: str) -> Entry | None:
        return next((e for e in self.entries if module in e.imports), None)


def load_mapping(mapping_path: Path, envs_dir: Path | None) -> tuple[dict[str, EnvMap], list[str]]:
    """The mapping, checked against the env files; returns (envs, problems)."""
    raw = yaml.safe_load(mapping_path.read_text()) or {}
    problems: list[str] = []
    envs: dict[str, EnvMap] = {}
    for env_name, section in raw.items():
        rel = Path(section["file"])
        path = (envs_dir / rel.name) if envs_dir else (REPO / rel)
        if not path.is_file():
            problems.append(f"{env_name}: env file {path} does not exist")
            continue
        mapped = {" ".join(str(k).split()): v or {} for k, v in section["packages"].items()}
        lines = env_lines(path)
        # both directions: every env line mapped, every mapping entry still in the env file
        gained = [line for line in lines if line not in mapped]
        lost = [key for key in mapped if key not in lines]
        lost_names = {split_dependency(k.removeprefix("pip:"))[0].lower(): k for k in lost}
        for line in gained:
            name = split_dependency(line.removeprefix("pip:"))[0].lower()
            if name in lost_names:
                problems.append(f"{env_name}: {path.name} has {line!r} but the mapping covers "
                                f"{lost_names.pop(name)!r}: update its entry (spec changed)")
            else:
                problems.append(f"{env_name}: {path.name} has {line!r}, which the mapping "
                                f"does not cover: add an entry for it")
        for key in lost_names.values():
            problems.append(f"{env_name}: the mapping covers {key!r}, which {path.name} does "
                            "not have: remove the entry (or add the line to the env file)")
        entries = []
        for line in lines:
            if line not in mapped:
                continue
            spec = mapped[line]
            is_pip = line.startswith("pip:")
            conda_name, raw_spec = split_dependency(line.removeprefix("pip:"))
            try:
                conda_spec = raw_spec if is_pip else conda_to_pep440(raw_spec)
            except ProxyError as err:
                problems.append(f"{env_name}: {line!r}: {err}")
                continue
            pypi = spec.get("pypi")
            pypi_name, pypi_spec = split_dependency(pypi) if pypi else (None, "")
            entry = Entry(line, conda_name, conda_spec, pypi, pypi_name, pypi_spec,
                          list(spec.get("imports") or []), spec.get("indirect"),
                          spec.get("narrowed"))
            problems += _check_entry(env_name, entry, spec)
            entries.append(entry)
        envs[env_name] = EnvMap(env_name, path, entries, dict(section.get("not_needed_imports")
                                                              or {}))
    # every env file has a mapping
    env_dir = envs_dir or (REPO / "envs")
    known = {m.file.name for m in envs.values()}
    for path in sorted(env_dir.glob("*.yaml")):
        if path.resolve() == mapping_path.resolve() or path.name == mapping_path.name:
            continue
        if path.name not in known:
            problems.append(f"{path.name}: an env file with no section in {mapping_path.name}")
    return envs, problems


def _check_entry(env_name: str, e: Entry, spec: dict) -> list[str]:
    where = f"{env_name}: {e.line!r}"
    unknown = set(spec) - {"pypi", "imports", "indirect", "narrowed", "note"}
    problems = [f"{where}: unknown field(s) {sorted(unknown)}"] if unknown else []
    if e.pypi is None:
        if not spec.get("note"):
            problems.append(f"{where}: pypi is null, so `note` must say why")
        if e.imports or e.indirect:
            problems.append(f"{where}: pypi is null but imports/indirect are given")
        return problems
    if e.pypi_spec == e.conda_spec:
        if e.narrowed:
            problems.append(f"{where}: `narrowed` given but the PyPI spec equals the conda one")
        return problems
    pin = re.fullmatch(r"==([0-9][0-9A-Za-z.+!]*)", e.pypi_spec)
    if not pin:
        problems.append(f"{where}: PyPI spec {e.pypi!r} is neither the conda spec "
                        f"({e.conda_spec or 'any'}) nor a pin inside it")
    elif not satisfies(pin.group(1), e.conda_spec):
        problems.append(f"{where}: PyPI pin {e.pypi} lies outside the conda spec "
                        f"{e.conda_spec}")
    elif not (e.narrowed or _is_same_pin(pin.group(1), e.conda_spec)):
        problems.append(f"{where}: PyPI pin {e.pypi} narrows {e.conda_spec}: say why "
                        "(`narrowed`)")
    return problems


def _is_same_pin(version: str, conda_spec: str) -> bool:
    """conda `=2.2.1` (2.2.1.*) and PyPI `==2.2.1` name the same release."""
    return conda_spec == f"=={version}.*"


# ---------------------------------------------------------------------------------------
# Rules: which env and which `python -m mmfusion` command each one runs.

@dataclass
class Rule:
    name: str
    env: str           # env file stem
    command: str       # e.g. 'train fold'
    module: str        # mmfusion.commands.<cmd>


_RULE_HEADER = re.compile(r"^[ \t]*(?:rule|checkpoint)[ \t]+(\w+)[ \t]*:", re.M)
_CONDA = re.compile(r"^[ \t]*conda:[ \t]*\n[ \t]*[\"']([^\"']+)[\"']", re.M)
_COMMAND = re.compile(r"python -m mmfusion\s+([a-z][a-z0-9_-]*)(?:\s+([a-z][a-z0-9_-]*))?")


def workflow_rules() -> tuple[list[Rule], list[str]]:
    rules, problems = [], []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        heads = list(_RULE_HEADER.finditer(text))
        for i, head in enumerate(heads):
            block = text[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            conda, commands = _CONDA.search(block), _COMMAND.findall(block)
            name = head.group(1)
            if not commands:
                if conda:
                    problems.append(f"rule {name} ({smk.name}) has a conda env but runs no "
                                    "`python -m mmfusion` command: the checker cannot follow it")
                continue
            if not conda:
                problems.append(f"rule {name} ({smk.name}) runs mmfusion but has no conda env")
                continue
            env = Path(conda.group(1)).stem
            for cmd, sub in commands:
                module_file = REPO / PACKAGE / "commands" / f"{cmd}.py"
                if not module_file.is_file():
                    problems.append(f"rule {name}: no module {module_file} for command {cmd}")
                    continue
                rules.append(Rule(name, env, f"{cmd} {sub}".strip(),
                                  f"{PACKAGE}.commands.{cmd}"))
    return rules, problems


# ---------------------------------------------------------------------------------------
# Static imports: the AST of the package modules a command reaches.

@dataclass
class ModuleImports:
    top_level: set[str] = field(default_factory=set)   # executed on import of the module
    anywhere: set[str] = field(default_factory=set)    # + inside functions


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


_CACHE: dict[str, ModuleImports] = {}


def module_imports(name: str) -> ModuleImports:
    """Absolute names a module imports (package submodules resolved to their files)."""
    if name in _CACHE:
        return _CACHE[name]
    path = _module_file(name)
    result = ModuleImports()
    _CACHE[name] = result
    if path is None:
        return result
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            parts = name.split(".")
            base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        out = [mod]
        for alias in node.names:  # `from pkg import submodule`
            sub = f"{mod}.{alias.name}"
            if mod.split(".")[0] == PACKAGE and _module_file(sub):
                out.append(sub)
        return out

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the TYPE_CHECKING body never runs
                visit(child, in_function)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in targets(node):
                result.anywhere.add(target)
                if not in_function:
                    result.top_level.add(target)
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef |
                                          ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    # cli imports every command module by name (importlib): that is a top-level import
    if name == f"{PACKAGE}.cli":
        for p in sorted((REPO / PACKAGE / "commands").glob("*.py")):
            if not p.stem.startswith("_"):
                for bucket in (result.top_level, result.anywhere):
                    bucket.add(f"{PACKAGE}.commands.{p.stem}")
    return result


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(roots: list[str], *, function_local: bool) -> dict[str, set[str]]:
    """Package modules reached from `roots` -> the third-party top-level names each imports."""
    seen: dict[str, set[str]] = {}
    todo = [m for r in roots for m in _with_parents(r)]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen[mod] = set()
        info = module_imports(mod)
        for target in info.anywhere if function_local else info.top_level:
            top = target.split(".")[0]
            if top == PACKAGE:
                todo += [m for m in _with_parents(target) if _module_file(m)]
            elif top and top not in sys.stdlib_module_names:
                seen[mod].add(top)
    return seen


def env_imports(env: str, rules: list[Rule]) -> dict[str, list[str]]:
    """Third-party top-level module -> the package modules importing it, for an env's rules:
    what `python -m mmfusion` imports at start-up (top-level imports only: the handlers'
    heavy imports are function-local) plus everything the env's command modules reach."""
    modules = sorted({r.module for r in rules if r.env == env})
    found: dict[str, set[str]] = collections.defaultdict(set)
    for closure_map in (closure([f"{PACKAGE}.__main__"], function_local=False),
                        closure(modules, function_local=True)):
        for mod, names in closure_map.items():
            for n in names:
                found[n].add(mod)
    return {k: sorted(v) for k, v in sorted(found.items())}


# ---------------------------------------------------------------------------------------
# check

@dataclass
class CheckResult:
    envs: dict[str, EnvMap]
    rules: list[Rule]
    needed: dict[str, dict[str, list[str]]]   # env -> module -> importers
    problems: list[str]
    report: list[str]


def run_check(mapping: Path = DEFAULT_MAPPING, envs_dir: Path | None = None) -> CheckResult:
    envs, problems = load_mapping(mapping, envs_dir)
    rules, rule_problems = workflow_rules()
    problems += rule_problems
    report: list[str] = []
    needed: dict[str, dict[str, list[str]]] = {}
    for env in sorted({r.env for r in rules} - set(envs)):
        problems.append(f"rules {[r.name for r in rules if r.env == env]} use env {env!r}, "
                        "which the mapping does not cover")
    for name, emap in envs.items():
        env_rules = [r for r in rules if r.env == name]
        if not env_rules:
            problems.append(f"{name}: no rule uses this env")
            continue
        imports = env_imports(name, rules)
        needed[name] = imports
        report.append(f"[{name}] rules: {', '.join(sorted({r.name for r in env_rules}))}")
        report.append(f"[{name}] commands: {', '.join(sorted({r.command for r in env_rules}))}")
        for mod, importers in imports.items():
            entry = emap.provider(mod)
            if entry is not None:
                report.append(f"[{name}]   {mod:<12} <- {entry.line}")
            elif mod in emap.not_needed:
                report.append(f"[{name}]   {mod:<12} <- (none: not needed by the rules, see "
                              "not_needed_imports; `run` proves the rules run without it)")
            else:
                shown = ", ".join(importers[:4]) + (" ..." if len(importers) > 4 else "")
                problems.append(f"{name}: MISSING: module {mod!r} (imported by {shown}) is "
                                f"provided by no package of {emap.file.name}")
        for mod in emap.not_needed:
            if mod not in imports:
                problems.append(f"{name}: not_needed_imports lists {mod!r}, which no module "
                                "of the env's rules imports: remove it")
            elif emap.provider(mod):
                problems.append(f"{name}: not_needed_imports lists {mod!r}, which "
                                f"{emap.provider(mod).line!r} provides: remove it")
        for e in emap.entries:
            if e.pypi is None:
                continue
            used = [m for m in e.imports if m in imports]
            if used and e.indirect:
                problems.append(f"{name}: {e.line!r} is marked indirect but {used} is imported "
                                "by the env's modules: drop `indirect`")
            elif not used and not e.indirect:
                problems.append(f"{name}: EXTRA: {e.line!r} is imported by no module of the "
                                "env's rules and gives no reason (`indirect`): drop it from "
                                f"{emap.file.name} or say why it is needed")
            elif not used:
                report.append(f"[{name}]   (indirect) {e.line}: {' '.join(e.indirect.split())}")
    return CheckResult(envs, rules, needed, problems, report)


# ---------------------------------------------------------------------------------------
# run: venvs, imports, versions, the workflow.

PROBE_MODULE = '''\
import json, os, sys
_d = os.environ.get("{var}")
if _d:
    with open(os.path.join(_d, f"{{os.getpid()}}.json"), "w") as _f:
        json.dump({{"prefix": sys.prefix, "executable": sys.executable, "argv": sys.argv,
                   "path": sys.path, "env": os.environ.get("MMFUSION_PROXY_ENV")}}, _f)
'''


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


def clean_env(path_first: Path | None = None) -> dict[str, str]:
    """This process's environment without anything that points a python at another venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
                        "PYTHONUSERBASE", PROBE_VAR, "MMFUSION_PROXY_ENV")}
    main_bin = str(Path(sys.prefix) / "bin")
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != main_bin]
    if path_first:
        parts.insert(0, str(path_first))
    env["PATH"] = os.pathsep.join(parts)
    return env


def default_wheelhouse() -> Path:
    """Where downloaded wheels are kept between runs: the package mirror's answers are not
    cacheable, so without it every run downloads PyTorch and its CUDA wheels (~3 GB)."""
    if os.environ.get("MMFUSION_PROXY_WHEELS"):
        return Path(os.environ["MMFUSION_PROXY_WHEELS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mmfusion-conda-proxy" / "wheels"


def _pip(py: Path, args: list[str], what: str, logfile: Path) -> None:
    res = sh([str(py), "-m", "pip", *args, "--disable-pip-version-check", "--progress-bar",
              "off"], env=clean_env())
    with logfile.open("a") as fh:
        fh.write(f"$ pip {' '.join(args)}\n{res.stdout}{res.stderr}\n")
    if res.returncode:
        raise ProxyError(f"{what} failed (see {logfile}):\n"
                         f"{res.stdout[-1500:]}{res.stderr[-2500:]}")


def _unbuilt_sdists(wheelhouse: Path) -> list[Path]:
    wheels = {normalise_dist("-".join(w.name.split("-")[:2])) for w in wheelhouse.glob("*.whl")}
    out = []
    for sdist in sorted([*wheelhouse.glob("*.tar.gz"), *wheelhouse.glob("*.zip")]):
        stem = sdist.name.removesuffix(".tar.gz").removesuffix(".zip")
        name, _, version = stem.rpartition("-")
        if normalise_dist(f"{name}-{version}") not in wheels:
            out.append(sdist)
    return out


def build_venv(emap: EnvMap, root: Path, reuse: bool = False,
               wheelhouse: Path | None = None) -> Path:
    """A fresh venv with exactly the mapped PyPI requirements (the newest releases inside
    them, as a conda solve would pick: `--upgrade` lifts the venv's own setuptools too)."""
    venv = root / emap.name
    stamp = root / f"{emap.name}.requirements"
    reqs = emap.pypi_requirements()
    if reuse and venv.is_dir() and stamp.is_file() and stamp.read_text() == "\n".join(reqs):
        log(f"[{emap.name}] reusing {venv} (--reuse: same requirements)")
        return venv
    stamp.unlink(missing_ok=True)
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", sys.executable)
    t0 = time.monotonic()
    res = sh([base, "-m", "venv", str(venv)], env=clean_env())
    if res.returncode:
        raise ProxyError(f"{emap.name}: venv failed: {res.stderr[-2000:]}")
    py = venv / "bin" / "python"
    logfile = root / f"{emap.name}.pip.log"
    logfile.write_text("")
    log(f"[{emap.name}] pip install {' '.join(reqs)}")
    if wheelhouse:
        # resolved against the index as usual; files already in the wheelhouse are not
        # downloaded again; then installed from the wheelhouse alone
        # (one folder per env: the two venvs are built at once)
        wheelhouse = wheelhouse / emap.name
        wheelhouse.mkdir(parents=True, exist_ok=True)
        _pip(py, ["download", "-d", str(wheelhouse), *reqs], f"{emap.name}: pip download",
             logfile)
        # an sdist (pyradiomics-bhklab) is built once into a wheel beside it
        for sdist in _unbuilt_sdists(wheelhouse):
            _pip(py, ["wheel", "--no-deps", "-w", str(wheelhouse), str(sdist)],
                 f"{emap.name}: pip wheel {sdist.name}", logfile)
        _pip(py, ["install", "--upgrade", "--no-compile", "--no-index", "--find-links",
                  str(wheelhouse), *reqs], f"{emap.name}: pip install", logfile)
    else:
        _pip(py, ["install", "--upgrade", "--no-compile", *reqs], f"{emap.name}: pip install",
             logfile)
    site = sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    purelib = Path(site.stdout.strip())
    (purelib / "_mmfusion_proxy_probe.py").write_text(PROBE_MODULE.format(var=PROBE_VAR))
    (purelib / "_mmfusion_proxy_probe.pth").write_text("import _mmfusion_proxy_probe\n")
    stamp.write_text("\n".join(reqs))
    log(f"[{emap.name}] venv {venv} built in {time.monotonic() - t0:.0f} s")
    return venv


_INSPECT = r'''
import importlib, importlib.metadata as md, json, platform, sys
mods, dists = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"python": platform.python_version(), "prefix": sys.prefix, "imports": {},
       "provides": {}, "versions": {}}
pd = md.packages_distributions()
for m in mods:
    try:
        importlib.import_module(m)
        out["imports"][m] = None
    except Exception as err:
        out["imports"][m] = f"{type(err).__name__}: {err}"
    out["provides"][m] = pd.get(m, [])
for d in dists:
    try:
        out["versions"][d] = md.version(d)
    except md.PackageNotFoundError:
        out["versions"][d] = None
print(json.dumps(out))
'''


def check_venv(emap: EnvMap, venv: Path, needed: dict[str, list[str]]) -> list[str]:
    """Imports, import->distribution, versions vs the conda spec, the interpreter."""
    problems = []
    wanted = sorted(m for m in needed if m not in emap.not_needed)
    # every module any entry claims to provide is checked too (the `imports` table itself)
    claimed = sorted({m for e in emap.entries for m in e.imports} | set(wanted))
    dists = [e.pypi_name for e in emap.entries if e.pypi_name]
    res = sh([str(venv / "bin" / "python"), "-I", "-c", _INSPECT, json.dumps(claimed),
              json.dumps(dists)], env=clean_env(), cwd=tempfile.gettempdir())
    if res.returncode:
        raise ProxyError(f"{emap.name}: inspecting the venv failed:\n{res.stderr[-3000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    log(f"[{emap.name}] python {info['python']} at {info['prefix']}")
    for e in emap.entries:
        if e.conda_name == "python" and e.pypi is None and not satisfies(info["python"],
                                                                         e.conda_spec):
            problems.append(f"{emap.name}: proxy python {info['python']} is outside {e.line}")
    for m in claimed:
        err = info["imports"][m]
        if err:
            problems.append(f"{emap.name}: import {m} fails in the proxy venv: {err}")
    for e in emap.entries:
        if not e.pypi_name:
            continue
        version = info["versions"].get(e.pypi_name)
        if version is None:
            problems.append(f"{emap.name}: {e.pypi_name} is not installed in the proxy venv")
            continue
        ok = satisfies(version, e.conda_spec)
        log(f"[{emap.name}]   {e.pypi_name}=={version}  (conda: {e.line})"
            f"{'' if ok else '  OUTSIDE THE CONDA SPEC'}")
        if not ok:
            problems.append(f"{emap.name}: installed {e.pypi_name} {version} is outside "
                            f"{e.line}")
        for m in e.imports:
            provides = {normalise_dist(d) for d in info["provides"].get(m, [])}
            if normalise_dist(e.pypi_name) not in provides:
                problems.append(f"{emap.name}: module {m} comes from {sorted(provides)}, not "
                                f"from {e.pypi_name} as the mapping says")
    for m in wanted:
        log(f"[{emap.name}]   import {m}: ok")
    for m in sorted(emap.not_needed):
        present = sh([str(venv / "bin" / "python"), "-I", "-c", f"import {m}"],
                     env=clean_env()).returncode == 0
        state = "present anyway (a dependency brought it)" if present else "absent"
        log(f"[{emap.name}]   {m}: not mapped, {state} in the proxy venv")
    return problems


_JOB = re.compile(r"^\s*(?:local)?(?:rule|checkpoint)\s+(\w+):\s*$", re.M)


def run_phase(label: str, venv: Path, env_name: str, args: list[str], workdir: Path,
              probe_dir: Path, rules: list[Rule]) -> tuple[list[str], list[str]]:
    """One snakemake run with the venv's bin first on PATH: (rules that ran, problems)."""
    probe = probe_dir / label
    probe.mkdir(parents=True)
    env = clean_env(venv / "bin")
    env[PROBE_VAR] = str(probe)
    env["MMFUSION_PROXY_ENV"] = env_name
    # the rules' `python` under this PATH (the shell rules call plain `python`)
    which = sh(["bash", "-c", "command -v python"], env=env).stdout.strip()
    if Path(which) != venv / "bin" / "python":
        raise ProxyError(f"{label}: `python` under the proxy PATH is {which!r}, not the venv's")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", *args]
    log(f"[{label}] PATH={venv / 'bin'}:...  {' '.join(cmd[1:])}")
    t0 = time.monotonic()
    res = sh(cmd, env=env, cwd=workdir)
    (probe_dir / f"{label}.snakemake.log").write_text(res.stdout + res.stderr)
    if res.returncode:
        raise ProxyError(f"{label}: snakemake failed (log {probe_dir}/{label}.snakemake.log):\n"
                         f"{(res.stdout + res.stderr)[-6000:]}")
    ran = _JOB.findall(res.stdout + res.stderr)
    log(f"[{label}] {len(ran)} jobs in {time.monotonic() - t0:.0f} s: "
        f"{dict(collections.Counter(ran))}")
    return ran, _check_probe(label, venv, probe, ran, rules)


def _check_probe(label: str, venv: Path, probe: Path, ran: list[str],
                 rules: list[Rule]) -> list[str]:
    """Each job must be matched by a python of this venv started with its command."""
    problems = []
    by_rule = {r.name: r for r in rules}
    records = [json.loads(p.read_text()) for p in sorted(probe.glob("*.json"))]
    main_prefix = str(Path(sys.prefix).resolve())
    for rec in records:
        if Path(rec["prefix"]).resolve() != venv.resolve():
            problems.append(f"{label}: a python ran with prefix {rec['prefix']}, not {venv}")
        leaks = [p for p in rec["path"] if p and str(Path(p).resolve()).startswith(main_prefix)]
        if leaks:
            problems.append(f"{label}: a rule's python saw the main venv on sys.path: {leaks}")
    commands = {r.command for r in rules}
    seen = collections.Counter(_argv_command(rec["argv"], commands) for rec in records)
    expected = collections.Counter(by_rule[r].command for r in ran if r in by_rule)
    for command, count in expected.items():
        if seen[command] < count:
            problems.append(f"{label}: {count} job(s) ran `mmfusion {command}` but only "
                            f"{seen[command]} proxy-venv python(s) did: a job used another "
                            "python")
    log(f"[{label}] probe: {len(records)} python(s) of {venv}, commands "
        f"{dict(sorted(seen.items()))}")
    return problems


def _argv_command(argv: list[str], commands: set[str]) -> str:
    """The rule command (e.g. 'train fold', 'crop') a python's argv ran: the longest known
    command its leading words start with ('' for anything else)."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    hits = [c for c in commands if words[: len(c.split())] == c.split()]
    return max(hits, key=lambda c: len(c.split()), default="")


def tiny_config(work: Path, **model: object) -> dict:
    """The demo config at test size; the external cohort (bundle.smk) is a few demo patients
    that `external_cohort` copies before the train rules run."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(work / "results")
    config["synth"] = dict(TINY_SYNTH)
    config["train"].update(epochs=3, warmup_epochs=1, restart_epoch=3)
    # one deep variant (train_fold) and one baseline (train_baseline): every train rule runs
    config["model"]["variants"] = ["mmfusion", "logreg"]
    config["model"].update(model)
    ext = work / "external"
    config["external"] = {"dicom_root": str(ext / "dicom"), "clinical": str(ext / "clinical.csv"),
                          "hematology": str(ext / "hematology.csv"), "variants": ["mmfusion"]}
    return config


def external_cohort(work: Path, per_class: int = 2) -> None:
    """A second cohort for the external rules: `per_class` demo patients of each label."""
    config = tiny_config(work)
    demo, ext = Path(config["results"]) / "demo_cohort", Path(config["external"]["dicom_root"])
    id_col, label_col = config["cohort"]["id_column"], config["cohort"]["label_column"]
    with open(demo / "clinical.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen: list[str] = []
    for label in sorted({r[label_col] for r in rows}):
        chosen += [r[id_col] for r in rows if r[label_col] == label][:per_class]
    ext.mkdir(parents=True)
    for pid in chosen:
        shutil.copytree(demo / "dicom" / pid, ext / pid)
    for table in ("clinical.csv", "hematology.csv"):
        with open(demo / table, newline="") as fh:
            reader = csv.DictReader(fh)
            kept = [r for r in reader if r[id_col] in chosen]
            fields = reader.fieldnames or []
        with open(ext.parent / table, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows(kept)


def run_proxy(mapping: Path = DEFAULT_MAPPING, envs_dir: Path | None = None,
              root: Path = PROXY_ROOT, envs: tuple[str, ...] = ENV_ORDER,
              keep_work: bool = False, reuse: bool = False,
              wheelhouse: Path | None = None) -> None:
    t_start = time.monotonic()
    check = run_check(mapping, envs_dir)
    for line in check.report:
        log(line)
    if check.problems:
        raise ProxyError("check failed:\n  " + "\n  ".join(check.problems))
    import importlib.util
    if importlib.util.find_spec("snakemake") is None:
        raise ProxyError(f"snakemake is not importable by {sys.executable}: run this script "
                         "with the main venv's python")
    root.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    work = root / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    results, probes = work / "results", work / "probe"
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(work)))
    env_rules = {n: sorted({r.name for r in check.rules if r.env == n}) for n in envs}
    ran_by_phase: dict[str, list[str]] = {}

    def phase(label: str, env_name: str, args: list[str]) -> None:
        ran, found = run_phase(label, venvs[env_name], env_name, args, work, probes,
                               check.rules)
        ran_by_phase[label] = ran
        if found:
            raise ProxyError("\n  ".join(found))

    def ready(name: str) -> None:
        venvs[name] = builds[name].result()
        found = check_venv(check.envs[name], venvs[name], check.needed[name])
        if found:
            raise ProxyError(f"{name} proxy venv:\n  " + "\n  ".join(found))

    venvs: dict[str, Path] = {}
    # both venvs are built at once (mostly download and unpacking), and the preprocess
    # rules run while the train venv is still being built
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        builds = {name: pool.submit(build_venv, check.envs[name], root, reuse, wheelhouse)
                  for name in sorted(envs, key=lambda n: n != "train")}
        # preprocess: the env's outputs as explicit targets (`--until` stalls on the
        # checkpoints: snakemake issue 823), then the crops of every converted patient
        if "preprocess" in envs:
            ready("preprocess")
            phase("preprocess", "preprocess",
                  [*[str(results / t) for t in PREPROCESS_TARGETS], "--configfile", str(cfg)])
            with open(results / "qc" / "convert_summary.tsv", newline="") as fh:
                ok = [r["patient_id"] for r in csv.DictReader(fh, delimiter="\t")
                      if r["status"] == "ok"]
            if not ok:
                raise ProxyError("preprocess: no patient converted")
            phase("preprocess-crop", "preprocess",
                  [*[str(results / "patients" / p / n) for p in ok
                     for n in ("patches.npz", "qc.png")], "--configfile", str(cfg)])
        if "train" in envs:
            ready("train")
            external_cohort(work)
            # the rest of the default target (bundles and the external cohort's reports
            # included): only train rules may be left to run
            phase("train", "train", ["--configfile", str(cfg)])
            # cache_features runs only with model.freeze_backbone: its target alone
            frozen = work / "config_frozen.yaml"
            frozen.write_text(yaml.safe_dump(tiny_config(work, freeze_backbone=True)))
            phase("train-frozen", "train",
                  [str(results / "cache" / "features"), "--configfile", str(frozen)])
    for label, ran in ran_by_phase.items():
        env_name = label.split("-")[0]
        wrong = sorted({r for r in ran if r in {x.name for x in check.rules}} -
                       set(env_rules[env_name]))
        if wrong:
            problems.append(f"{label}: rules of another env ran with the {env_name} venv: "
                            f"{wrong}")
    for name in envs:
        done = {r for label, ran in ran_by_phase.items() if label.startswith(name) for r in ran}
        missing = sorted(set(env_rules[name]) - done)
        if missing:
            problems.append(f"{name}: rules never run in the proxy: {missing}")
    problems += _check_probe_totals(probes, ran_by_phase)
    if "train" in envs and not (results / "report" / "metrics_summary.csv").is_file():
        problems.append("train: the report was not written")
    if problems:
        raise ProxyError("proxy run:\n  " + "\n  ".join(problems))
    if not keep_work:
        shutil.rmtree(work)
    log(f"conda proxy passed for {', '.join(envs)} in {time.monotonic() - t_start:.0f} s")


def _check_probe_totals(probes: Path, ran_by_phase: dict[str, list[str]]) -> list[str]:
    problems = []
    for label, ran in ran_by_phase.items():
        n = len(list((probes / label).glob("*.json")))
        if ran and n == 0:
            problems.append(f"{label}: {len(ran)} jobs ran but no proxy-venv python started")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["check", "run"])
    parser.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING)
    parser.add_argument("--envs-dir", type=Path, default=None,
                        help="read the env files from here instead of the mapping's paths")
    parser.add_argument("--root", type=Path, default=PROXY_ROOT,
                        help="where the proxy venvs go (default .proxy-envs/)")
    parser.add_argument("--env", action="append", choices=ENV_ORDER,
                        help="only this env (repeatable; train needs preprocess's outputs)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the tiny run's folder (ROOT/work)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a proxy venv built from the same requirements (a fresh "
                        "venv is the proof; this only speeds up reruns)")
    parser.add_argument("--wheelhouse", type=Path, default=None,
                        help="keep downloaded wheels here between runs (default: "
                        "$MMFUSION_PROXY_WHEELS or ~/.cache/mmfusion-conda-proxy/wheels)")
    parser.add_argument("--no-wheelhouse", action="store_true",
                        help="plain `pip install` from the index (downloads every time)")
    args = parser.parse_args(argv)
    try:
        if args.action == "check":
            result = run_check(args.mapping, args.envs_dir)
            for line in result.report:
                log(line)
            if result.problems:
                log("conda proxy check FAILED:\n  " + "\n  ".join(result.problems))
                return 1
            log("conda proxy check passed")
            return 0
        envs = tuple(e for e in ENV_ORDER if e in (args.env or ENV_ORDER))
        if "train" in envs and "preprocess" not in envs:
            parser.error("--env train needs --env preprocess too (train runs on its outputs)")
        wheelhouse = None if args.no_wheelhouse else (args.wheelhouse or default_wheelhouse())
        run_proxy(args.mapping, args.envs_dir, args.root, envs, args.keep_work, args.reuse,
                  wheelhouse)
        return 0
    except ProxyError as err:
        log(f"conda proxy FAILED: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
