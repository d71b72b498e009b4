"""Resource requests of the rules: every job declares mem_mb and runtime, GPUs follow the
config, and the estimates scale with the work (mmfusion/workflow/resources.py)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from mmfusion.model.variants import BASELINES, VARIANTS
from mmfusion.settings import resolve_config
from mmfusion.workflow.resources import RuleResources, cohort_size, gpus_per_job
from tests.test_workflow import REPO, _snakemake

DEMO = resolve_config(yaml.safe_load((REPO / "config.yaml").read_text()))
DEEP = [v for v in DEMO["model"]["variants"] if v in VARIANTS and v not in BASELINES]


def _config(**train: object) -> dict:
    config = copy.deepcopy(DEMO)
    config["train"].update(train)
    return config


def dry_run_jobs(results: Path, extra: list[str] | None = None,
                 config: dict | None = None) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run of all model outputs would start."""
    config = copy.deepcopy(config or DEMO)
    config["results"] = str(results)
    cfg = results.parent / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    targets = [str(results / f"models/{v}/fold{k}/metrics.json")
               for v in config["model"]["variants"] for k in range(config["folds"]["n_folds"])]
    res = _snakemake(["-n", "--configfile", str(cfg), *(extra or []), "--", *targets])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs, rule = [], None
    for line in (res.stdout + res.stderr).splitlines():
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", line.strip())
        if head:
            rule = head.group(1)
        elif line.strip().startswith("resources:") and rule:
            pairs = dict(p.split("=", 1) for p in line.split(":", 1)[1].strip().split(", "))
            jobs.append((rule, pairs))
            rule = None
    return jobs


def test_every_job_declares_memory_and_runtime_and_the_cpu_demo_no_gpu(tmp_path: Path) -> None:
    jobs = dry_run_jobs(tmp_path / "results")
    rules = {rule for rule, _ in jobs}
    assert {"train_fold", "train_baseline", "index_dicom", "build_cohort"} <= rules
    for rule, res in jobs:
        assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, (rule, res)
    train = [res for rule, res in jobs if rule == "train_fold"]
    assert len(train) == len(DEEP) * DEMO["folds"]["n_folds"]
    assert all(res["gpu"] == "0" for res in train)


def test_gpus_per_job_becomes_the_training_jobs_gpu_request(tmp_path: Path) -> None:
    jobs = dry_run_jobs(tmp_path / "results", config=_config(gpus_per_job=1))
    train = [res for rule, res in jobs if rule == "train_fold"]
    assert train and all(res["gpu"] == "1" for res in train)
    assert all("gpu" not in res for rule, res in jobs if rule == "train_baseline")


def test_gpu_request_follows_the_device_when_not_set() -> None:
    assert gpus_per_job(_config(device="auto")) == 0
    assert gpus_per_job(_config(device="cpu")) == 0
    assert gpus_per_job(_config(device="cuda")) == 1
    assert gpus_per_job(_config(device="cuda", gpus_per_job=0)) == 0
    assert gpus_per_job(_config(device="auto", gpus_per_job=2)) == 2


def test_training_runtime_scales_with_epochs_cohort_and_shapes() -> None:
    base = RuleResources.from_config(DEMO).table["train_fold"][1]
    longer = RuleResources.from_config(_config(epochs=DEMO["train"]["epochs"] * 4))
    assert longer.table["train_fold"][1] > 3 * (base - 10)
    bigger = copy.deepcopy(DEMO)
    bigger["synth"]["n_patients"] *= 5
    assert RuleResources.from_config(bigger).table["train_fold"][1] > base
    paper = copy.deepcopy(DEMO)
    paper["crop"].update(tumour_size=[42, 128, 128],
                         node_sizes=[[22, 90, 90], [16, 68, 68], [8, 48, 48]])
    paper["model"].update(depth=50, base_width=64)
    cpu, gpu = RuleResources.from_config(paper), RuleResources.from_config(
        {**paper, "train": {**paper["train"], "gpus_per_job": 1}})
    assert cpu.table["train_fold"][1] > 10 * gpu.table["train_fold"][1] > 10 * base
    assert cpu.table["train_fold"][0] > RuleResources.from_config(DEMO).table["train_fold"][0]


def test_retries_ask_for_more() -> None:
    res = RuleResources.from_config(DEMO)
    mem, runtime = res.table["convert_patient"]
    assert res.mem("convert_patient")(None, 1) == mem
    assert res.mem("convert_patient")(None, 3) == 3 * mem
    assert res.runtime("train_fold")(None, 2) == 2 * res.table["train_fold"][1]


def test_cohort_size_of_a_real_cohort_counts_the_clinical_rows(tmp_path: Path) -> None:
    table = tmp_path / "clinical.csv"
    table.write_text("id;age\n" + "".join(f"P{i};60\n" for i in range(37)) + "\n")
    config = copy.deepcopy(DEMO)
    config["cohort"].update(synthetic=False, clinical=str(table), dicom_root=str(tmp_path))
    assert cohort_size(config) == 37
    assert cohort_size(DEMO) == DEMO["synth"]["n_patients"]
