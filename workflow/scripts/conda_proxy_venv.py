"""Conda proxy, part 3 (see conda_proxy.py): a fresh venv per env from the mapped PyPI
specs (downloads kept in a wheelhouse), a probe that records every python started in it,
and the check of its imports, import->distribution map and versions against the conda spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conda_proxy_specs import EnvMap, ProxyError, log, normalise_dist, satisfies

PROBE_VAR = "MMFUSION_PROXY_PROBE"

PROBE_MODULE = '''\
import json, os, sys
_d = os.environ.get("{var}")
if _d:
    with open(os.path.join(_d, f"{{os.getpid()}}.json"), "w") as _f:
        json.dump({{"prefix": sys.prefix, "executable": sys.executable, "argv": sys.argv,
                   "path": sys.path, "env": os.environ.get("MMFUSION_PROXY_ENV")}}, _f)
'''


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    """Runs a command, capturing its text output."""
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
    """Runs pip in a venv, appending its output to `logfile`; a failure raises ProxyError."""
    res = sh([str(py), "-m", "pip", *args, "--disable-pip-version-check", "--progress-bar",
              "off"], env=clean_env())
    with logfile.open("a") as fh:
        fh.write(f"$ pip {' '.join(args)}\n{res.stdout}{res.stderr}\n")
    if res.returncode:
        raise ProxyError(f"{what} failed (see {logfile}):\n"
                         f"{res.stdout[-1500:]}{res.stderr[-2500:]}")


def _unbuilt_sdists(wheelhouse: Path) -> list[Path]:
    """The sdists in the wheelhouse that have no wheel beside them yet."""
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

