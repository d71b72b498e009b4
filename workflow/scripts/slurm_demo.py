"""`make slurm-demo`: the demo workflow through a real SLURM scheduler, checked against a local run.

Brings up a single-node Slurm on this machine (workflow/scripts/slurm-local.sh up; root, no
systemd needed), runs the workflow on a small synthetic cohort with
`--profile workflow/profiles/slurm` so that every job goes through `sbatch`, runs the same
config locally, compares the two runs' models (predictions byte for byte, metrics; see
compare_results.py), and brings the cluster down again whatever happened. Writes
`{out}/slurm_demo.json` with the times, the SLURM jobs and the verdict; exit 0 only when every
job was a COMPLETED SLURM job and the outputs are identical.

The machine's node has no GPU: the demo asks for none (`--set-resources train_fold:gpu=0`),
and caps threads and each batch job's CPUs (`--cores`) at the node's cores. The per-patient
stages are batched `--group-components` patients per SLURM job, so the log shows the grouping
a 1,000-patient cohort gets.

    python workflow/scripts/slurm_demo.py [--patients 40] [--epochs N] [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "workflow" / "scripts" / "slurm-local.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_results import compare_results  # noqa: E402

SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
RUN_ID = re.compile(r"SLURM run ID: ([0-9a-f-]+)")
# the `group:` names of the per-patient rules -> jobs per patient in that group (Snakemake
# batches jobs, and a patient's crop and radiomics jobs are two unconnected ones)
GROUPS = {"convert": 1, "patients": 2}


def demo_config(out: Path, name: str, patients: int, epochs: int | None,
                variants: Sequence[str] | None) -> Path:
    """The demo config with a smaller cohort, its results under `out/name`; returns its path."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(out / name)
    config["synth"]["n_patients"] = patients
    if epochs is not None:
        config["train"].update(epochs=epochs, warmup_epochs=min(1, epochs),
                               restart_epoch=epochs)
    if variants:
        config["model"]["variants"] = list(variants)
    path = out / f"config_{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _snakemake(args: list[str], log: Path, timeout_s: int) -> tuple[int, float]:
    """Run snakemake (this interpreter's) from the repo root; (exit code, seconds). The
    machine's load average before and after is appended to the log (other work on the
    machine slows both runs)."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # `timeout -k`: snakemake may outlive a SIGTERM while SLURM jobs are pending
    cmd = ["timeout", "-k", "30", str(timeout_s), str(bindir / "snakemake"), *args]
    t0 = time.monotonic()
    load_before = os.getloadavg()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    LOADS[log.stem] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    return rc, time.monotonic() - t0


# run name -> load averages (1, 5, 15 min) before the run, then after it
LOADS: dict[str, list[float]] = {}


def sacct_jobs(run_id: str, since: str) -> list[dict[str, str]]:
    """This run's SLURM jobs (the plugin names them after its run ID) from accounting."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", since,
                          "-o", "JobID,JobName%40,Comment%300,State,Elapsed,ReqMem,AllocCPUS,"
                          "Submit,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    keys = ("job_id", "name", "comment", "state", "elapsed", "req_mem", "cpus", "submit",
            "start", "end")
    rows = [dict(zip(keys, line.split("|"), strict=True))
            for line in out.splitlines() if line.strip()]
    return [r for r in rows if r["name"] == run_id]


def _seconds(stamp: str) -> float | None:
    """sacct's `2026-12-08T01:05:00` as epoch seconds; None for Unknown/None."""
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def job_timing(jobs: list[dict[str, str]], wall_s: float) -> dict[str, float]:
    """Where a SLURM run's wall time went: seconds the jobs ran (summed, and the span with at
    least one job running) and waited queued; the rest of the wall time is submission and
    status-check latency (the plugin notices a finished job at its next status check)."""
    spans = [(s, e, q) for j in jobs
             if None not in (s := _seconds(j.get("start", "")), e := _seconds(j.get("end", "")),
                             q := _seconds(j.get("submit", "")))]
    busy, last = 0.0, float("-inf")
    for start, end, _ in sorted(spans):  # union of the running intervals
        busy += max(0.0, end - max(start, last))
        last = max(last, end)
    return {"jobs_seconds_sum": sum(e - s for s, e, _ in spans),
            "jobs_running_span_seconds": busy,
            "queued_seconds_sum": sum(s - q for s, _, q in spans),
            "no_job_running_seconds": round(max(0.0, wall_s - busy), 1)}


def rules_run(results: Path) -> set[str]:
    """Rules that ran, from the benchmark files every rule writes
    (`benchmarks/{rule}.tsv` or `benchmarks/{rule}/...`)."""
    bench = results / "benchmarks"
    if not bench.is_dir():
        return set()
    return ({p.stem for p in bench.glob("*.tsv")}
            | {p.name for p in bench.iterdir() if p.is_dir()})


def check_slurm_run(log_text: str, jobs: list[dict[str, str]], results: Path,
                    group_size: int, patients: int) -> list[str]:
    """Problems with the SLURM run: a job not COMPLETED, a rule that ran outside SLURM, a
    submission missing from accounting, per-patient batches not as configured."""
    problems = []
    submitted = set(SUBMITTED.findall(log_text))
    accounted = {j["job_id"] for j in jobs}
    if submitted != accounted:
        problems.append(f"submitted {sorted(submitted)} but accounting lists {sorted(accounted)}")
    problems += [f"SLURM job {j['job_id']} ({j['comment']}) ended {j['state']}"
                 for j in jobs if j["state"] != "COMPLETED"]
    # the plugin's comment: `rule_{rule}_wildcards_...`, or `rule_{group}_{rule}_{rule}...`
    missing = sorted(r for r in rules_run(results)
                     if not any(f"_{r}_" in f"{j['comment']}_" for j in jobs))
    if missing:
        problems.append(f"rules that ran but not as a SLURM job: {missing}")
    local = sorted(set(re.findall(r"^localrule (\w+):", log_text, flags=re.M)) - {"all"})
    if local:
        problems.append(f"rules run locally, not through sbatch: {local}")
    for group, per_patient in GROUPS.items():
        expected = math.ceil(patients * per_patient / group_size)
        n = sum(1 for j in jobs if j["comment"].startswith(f"rule_{group}_"))
        if n != expected:
            problems.append(f"group {group}: {n} batch jobs, expected {expected} "
                            f"({patients} patients x {per_patient} jobs, {group_size} per job)")
    return problems


def group_components(group_size: int) -> list[str]:
    """The profile's group-components with the per-patient groups set to `group_size`: a
    --group-components on the command line replaces the profile's whole list."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    sizes = dict(item.split("=", 1) for item in profile.get("group-components") or [])
    sizes.update({g: str(group_size) for g in GROUPS})
    return [f"{g}={n}" for g, n in sizes.items()]


def cluster(action: str) -> None:
    subprocess.run(["bash", str(CLUSTER), action], check=action == "up")


def run_demo(out: Path, patients: int, epochs: int | None, variants: Sequence[str] | None,
             group_size: int, timeout_s: int,
             extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Cluster up, SLURM run, local run, comparison; the cluster goes down in any case.
    `extra_args` go to the SLURM run's snakemake after the profile (to try a setting)."""
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    slurm_cfg = demo_config(out, "slurm", patients, epochs, variants)
    local_cfg = demo_config(out, "local", patients, epochs, variants)
    summary: dict[str, Any] = {"patients": patients, "group_size": group_size, "cores": cores}
    # a SIGTERM (CI timeout, Ctrl-\) must still bring the cluster down: make it an exception
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        t0 = time.monotonic()
        cluster("up")
        summary["cluster_up_seconds"] = round(time.monotonic() - t0, 1)
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        rc, secs = _snakemake(
            ["--profile", str(PROFILE.relative_to(REPO)), "--configfile", str(slurm_cfg),
             "--max-threads", str(cores), "--cores", str(cores),
             "--set-resources", "train_fold:gpu=0", "cache_features:gpu=0",
             "--group-components", *group_components(group_size), *extra_args],
            out / "slurm.log", timeout_s)
        log_text = (out / "slurm.log").read_text()
        run_id = RUN_ID.search(log_text)
        jobs = sacct_jobs(run_id.group(1), since) if run_id else []
        summary.update(slurm_rc=rc, slurm_seconds=round(secs, 1), slurm_jobs=jobs,
                       slurm_timing=job_timing(jobs, secs), extra_args=list(extra_args))
        problems = [] if rc == 0 else [f"SLURM run failed (exit {rc}); see {out}/slurm.log"]
        if rc == 0:
            problems += check_slurm_run(log_text, jobs, out / "slurm", group_size, patients)
    finally:
        cluster("down")
    rc, secs = _snakemake(["--cores", str(cores), "--configfile", str(local_cfg)],
                          out / "local.log", timeout_s)
    summary.update(local_rc=rc, local_seconds=round(secs, 1), load_averages=dict(LOADS))
    if rc != 0:
        problems.append(f"local run failed (exit {rc}); see {out}/local.log")
    n_folds, diffs = compare_results(out / "slurm", out / "local")
    summary.update(folds_compared=n_folds, differences=diffs, problems=problems + diffs,
                   ok=not problems and not diffs)
    (out / "slurm_demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=40, help="synthetic cohort size")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--variants", nargs="+", default=None, help="override model.variants")
    ap.add_argument("--group-size", type=int, default=20,
                    help="jobs per SLURM batch job of the per-patient stages")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "slurm-demo")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per workflow run")
    ap.add_argument("--snakemake-args", default="",
                    help="extra arguments for the SLURM run, after the profile (one string)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root: it installs and starts a single-node Slurm on this machine")
    s = run_demo(args.out.resolve(), args.patients, args.epochs, args.variants,
                 args.group_size, args.timeout, shlex.split(args.snakemake_args))
    n_jobs = len(s["slurm_jobs"])
    print(f"SLURM run: {s['slurm_seconds']:.0f} s, {n_jobs} sbatch jobs "
          f"({sum(j['state'] == 'COMPLETED' for j in s['slurm_jobs'])} COMPLETED); "
          f"local run: {s['local_seconds']:.0f} s; ratio "
          f"{s['slurm_seconds'] / max(s['local_seconds'], 1e-9):.2f}")
    t = s.get("slurm_timing", {})
    if t:
        print(f"SLURM jobs ran {t['jobs_seconds_sum']:.0f} s in all (some at once), queued "
              f"{t['queued_seconds_sum']:.0f} s in all; for {t['no_job_running_seconds']:.0f} s "
              "of the SLURM run no job was running (submission and status-check latency)")
    for name, load in s.get("load_averages", {}).items():
        print(f"load average during the {name} run: {load[0]:.1f} before, {load[3]:.1f} after "
              f"(1 min; {os.cpu_count()} cores)")
    for job in s["slurm_jobs"]:
        print(f"  SLURM job {job['job_id']:>5}  {job['state']:<10} {job['elapsed']}  "
              f"{job['cpus']} CPU {job['req_mem']:>6}  {job['comment']}")
    for line in s["problems"]:
        print(f"PROBLEM: {line}")
    print(f"compared {s['folds_compared']} fold folders: "
          + ("identical to the local run" if not s["differences"] else "DIFFERENT"))
    print(f"summary: {args.out}/slurm_demo.json")
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
