"""Conda proxy, part 1 (see conda_proxy.py): the shared ground (paths, ProxyError, log),
conda match specs as PEP 440 with a small release-number comparison, and
envs/pip-equivalents.yaml read and checked against the env files (both directions)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "mmfusion"
DEFAULT_MAPPING = REPO / "envs" / "pip-equivalents.yaml"


class ProxyError(Exception):
    """A finding that makes the proxy fail."""


def log(msg: str) -> None:
    """Prints at once (CI shows the progress of a long run)."""
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
    """The release numbers of a version: '2.2.1rc1' -> (2, 2, 1)."""
    m = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    if not m:
        raise ProxyError(f"cannot read version {version!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Compares two release tuples, missing parts as 0: -1, 0 or 1."""
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
    """A distribution name as PEP 503 normalises it, to compare names."""
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
    """One dependency line of an env file and its PyPI equivalent."""
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
    """One conda env file and its PyPI equivalents."""
    name: str
    file: Path
    entries: list[Entry]
    not_needed: dict[str, str]

    def pypi_requirements(self) -> list[str]:
        """The pip requirements of the env's proxy venv."""
        return [e.pypi for e in self.entries if e.pypi]

    def provider(self, module: str) -> Entry | None:
        """The entry whose package provides `module`, or None."""
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
    """An entry's PyPI spec is the conda spec or a pin inside it that says why; else problems."""
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

