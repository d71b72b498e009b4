"""Conda proxy, part 4 (see conda_proxy.py): `run`: both venvs built, then every rule of
each env run on a tiny synthetic cohort with that venv's python first on PATH, and the
probe records held against the jobs that ran."""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import json
import re
import shutil
import sys
import time
from pathlib import Path

import yaml
from conda_proxy_check import Rule, run_check
from conda_proxy_specs import DEFAULT_MAPPING, REPO, ProxyError, log
from conda_proxy_venv import PROBE_VAR, build_venv, check_venv, clean_env, sh

PROXY_ROOT = REPO / ".proxy-envs"
# Rules of an env run in this order; later envs' rules need earlier envs' outputs.
ENV_ORDER = ("preprocess", "train")
TINY_SYNTH = {"n_patients": 12, "seed": 3, "prevalence": 0.5, "matrix": 64, "n_slices": 32,
              "pixel_spacing": 5.2, "slice_thickness": 5.0}
# What the preprocess phase asks for (under results/); the crops follow per patient.
PREPROCESS_TARGETS = ("cohort/table.tsv", "cohort/folds.tsv", "qc/preflight_summary.json",
                      "qc/convert_summary.tsv")


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
    """`run`: `check`, then both venvs built and every rule of each env run in its venv."""
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
        """One snakemake run in an env's venv; its findings fail the proxy."""
        ran, found = run_phase(label, venvs[env_name], env_name, args, work, probes,
                               check.rules)
        ran_by_phase[label] = ran
        if found:
            raise ProxyError("\n  ".join(found))

    def ready(name: str) -> None:
        """Waits for an env's venv and checks its imports and versions."""
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
            # ensemble_seeds runs only with train.seeds > 1: one baseline fold with two
            # seeds (their runs go to fold0/seed{s}/, the ensemble rewrites fold0/)
            seeds = work / "config_seeds.yaml"
            seeded = tiny_config(work)
            seeded["train"]["seeds"] = 2
            seeds.write_text(yaml.safe_dump(seeded))
            phase("train-seeds", "train",
                  [str(results / "models" / "logreg" / "fold0" / "predictions.csv"),
                   "--forcerun", "ensemble_seeds", "--configfile", str(seeds)])
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
    """Every phase that ran jobs must have started a python of its proxy venv."""
    problems = []
    for label, ran in ran_by_phase.items():
        n = len(list((probes / label).glob("*.json")))
        if ran and n == 0:
            problems.append(f"{label}: {len(ran)} jobs ran but no proxy-venv python started")
    return problems

