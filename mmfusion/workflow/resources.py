"""Resource requests of the workflow's rules (`resources:` mem_mb, runtime, gpu), from the config.

Schedulers kill a job that outlives its `runtime` or outgrows its `mem_mb`, and refuse one
that asks for more than a partition allows; a local `snakemake --resources gpu=N` starts
only as many GPU jobs as there are GPUs. So every rule declares all three, scaled from the
config where the work scales (training: epochs, cohort size, patch voxels, backbone size,
device) and multiplied by the attempt number, so a retried job (`retries:` in a profile)
asks for more. A profile's `set-resources` overrides any of them. Torch-free: the workflow
imports this while it parses its rules.

The training estimate is calibrated on the CPU demo (measured: see `TRAIN_CPU_SECONDS`) and
extrapolated by voxel and backbone ratios; on a GPU it assumes `TRAIN_GPU_SECONDS` per
patient and epoch at the paper's shapes (an assumption, not a measurement: set
`train_fold: runtime:` in the profile once `make gpu-check` has measured your GPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfusion.model.variants import VARIANTS
from mmfusion.workflow.inputs import CohortInputs

# Seconds per (patient x epoch) of a demo-shaped deep variant on one CPU thread
# (ResNet-10, width 8, DEMO_VOXELS patch voxels per patient), measured on the demo's
# train_fold benchmarks (2-core machine: mmfusion 32-39 s for 40 epochs of 120 patients,
# 0.007 s; max RSS 830 MB), diffusion updates and validation included.
TRAIN_CPU_SECONDS = 0.01
DEMO_VOXELS = 20 * 48 * 48 + 8 * 32 * 32 + 2 * 8 * 24 * 24
# Assumed seconds per (patient x epoch) on one GPU at the paper's shapes (ResNet-50, width
# 64, PAPER_VOXELS): about 1 TFLOP of training work per patient, at a fraction of a modern
# GPU's fp32 rate. Not measured here (no GPU): `make gpu-check` measures yours.
TRAIN_GPU_SECONDS = 0.2
PAPER_VOXELS = 42 * 128 * 128 + 22 * 90 * 90 + 16 * 68 * 68 + 8 * 48 * 48
GPU_FLOOR_SECONDS = 0.01  # small shapes leave a GPU mostly waiting on launches
GPU_HOST_MEM = 8000  # MB of host memory of a GPU job (the activations live on the GPU)
# Relative cost of the 3D ResNet depths at equal width (bottleneck blocks from 50 on).
DEPTH_COST = {10: 1.0, 18: 1.8, 34: 3.4, 50: 4.2}
SAFETY = 2.0  # headroom on every estimate (machines differ)
ASSUMED_PATIENTS = 500  # cohort size when it cannot be read from the config or table
MIN_RUNTIME = 10  # minutes: scheduler start-up, imports, caching


def gpus_per_job(config: Mapping[str, Any]) -> int:
    """GPUs one train_fold / cache_features job requests: `train.gpus_per_job`, or, when
    that is null, 1 for `train.device: cuda` and 0 otherwise (the CPU demo requests none;
    the SLURM profile raises it with `set-resources`)."""
    train = config["train"]
    if train.get("gpus_per_job") is not None:
        return int(train["gpus_per_job"])
    return 1 if train["device"] == "cuda" else 0


def cohort_size(config: Mapping[str, Any]) -> int:
    """Patients in the cohort, known before any stage runs: the demo's `synth.n_patients`,
    else the clinical table's data lines (an upper bound: some may be excluded)."""
    cohort = CohortInputs.from_config(config)
    if cohort.synthetic:
        return int(config["synth"]["n_patients"])
    try:
        with Path(cohort.clinical).open("rb") as handle:
            lines = sum(1 for line in handle if line.strip())
    except OSError:
        return ASSUMED_PATIENTS
    return max(lines - 1, 1)


def _voxels(sizes: Sequence[Sequence[int]]) -> int:
    return sum(math.prod(size) for size in sizes)


# Fixed requests (mem_mb, runtime minutes) of the rules whose work does not scale with the
# config. Per patient, on a 512 x 512 x 300 planning CT (`python bench/bench_memory.py`):
# convert peaks at 481 MiB (16 s), crop at 1161 MiB (9 s, the paper's 1 mm patches),
# radiomics at 1236 MiB (9 s); the requests give each about twice that.
FIXED: dict[str, tuple[int, int]] = {
    "synth_cohort": (4000, 30),
    "convert_patient": (1000, 15),
    "summarise_conversion": (1000, 5),
    "preflight": (2000, 10),
    "crop_patient": (2500, 10),
    "extract_radiomics": (2500, 20),
    "build_cohort": (2000, 10),
    "make_folds": (1000, 5),
    "train_baseline": (2000, 15),
    "build_report": (4000, 30),
    "bundle_model": (1000, 5),  # copies and checksums
    "ensemble_seeds": (1000, 5),  # a fold's seeds' predictions averaged (train.seeds > 1)
    "external_report": (4000, 15),
}


@dataclass(frozen=True)
class RuleResources:
    """`mem_mb` and `runtime` of every rule, first attempt; `mem(rule)` and `runtime(rule)`
    give the Snakemake callables (scaled by the attempt number)."""

    table: Mapping[str, tuple[int, int]]  # rule -> (mem_mb, runtime minutes)
    gpus: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RuleResources:
        crop, model, train = config["crop"], config["model"], config["train"]
        gpus = gpus_per_job(config)
        n_patients = cohort_size(config)
        voxels = _voxels([crop["tumour_size"], *crop["node_sizes"]])
        width = model["base_width"] / 8
        depth_cost = DEPTH_COST.get(int(model["depth"]), max(DEPTH_COST.values()))
        if gpus:
            per_sample = max(GPU_FLOOR_SECONDS, TRAIN_GPU_SECONDS * voxels / PAPER_VOXELS
                             * (width / 8) ** 2 * depth_cost / DEPTH_COST[50])
        else:
            per_sample = TRAIN_CPU_SECONDS * voxels / DEMO_VOXELS * width ** 2 * depth_cost
        # one pass over the cohort; training runs `epochs` of them (plus validation)
        cohort_pass = per_sample * n_patients * SAFETY / 60
        train_minutes = MIN_RUNTIME + math.ceil(cohort_pass * int(train["epochs"]))
        features_minutes = MIN_RUNTIME + math.ceil(cohort_pass)
        # host memory: the model and optimiser, a batch of patches and its activations
        # (on a GPU the activations live there; the host figure stays a safe bound)
        batch_mb = int(train["batch_size"]) * voxels * 4 * width * 24 / 2 ** 20
        train_mem = GPU_HOST_MEM if gpus else _round_up(2000 + batch_mb * depth_cost, 500)
        # the patch cache is written patient by patient (memory-mapped), the index holds
        # one header row per file
        table = dict(FIXED)
        table["index_dicom"] = (2000 + n_patients * 2, MIN_RUNTIME + math.ceil(n_patients / 20))
        table["cache_patches"] = (2000, MIN_RUNTIME + math.ceil(n_patients / 100))
        table["cache_features"] = (train_mem, features_minutes)
        table["train_fold"] = (train_mem, train_minutes)
        # external validation: `mmfusion predict` prepares every patient of the second
        # cohort (convert + crop + radiomics: ~0.5 min per patient on 4 threads, measured
        # 200 demo-sized patients in 5 min) and scores them with the K fold models
        external = int(math.ceil(cohort_size({**config, "cohort": {
            **config["cohort"], "synthetic": False,
            "clinical": config.get("external", {}).get("clinical", "")}}) / 2))
        table["external_prepare"] = (FIXED["extract_radiomics"][0], MIN_RUNTIME + external)
        # ... with every model of the bundle: folds x repeats x seeds
        models = int(config["folds"].get("repeats", 1)) * int(train.get("seeds", 1))
        table["predict_external"] = (train_mem, features_minutes * 2 * models)
        table["bundle_model"] = (FIXED["bundle_model"][0],
                                 FIXED["bundle_model"][1] * max(1, math.ceil(models / 2)))
        # Fig. 3 (plot_trajectories): every diffusion variant's fold models run forward
        # once over the cohort (each patient is a test patient once), on the CPU, without
        # gradients (taken as a third of a training step's time and activation memory);
        # t-SNE of the test patients is negligible
        n_diffusion = sum(1 for v in model["variants"] if VARIANTS.get(v, (False,) * 3)[2])
        forward = (TRAIN_CPU_SECONDS * voxels / DEMO_VOXELS * width ** 2 * depth_cost / 3
                   * n_patients * max(n_diffusion, 1) * SAFETY / 60)
        table["plot_trajectories"] = (_round_up(2000 + batch_mb * depth_cost / 3, 500),
                                      MIN_RUNTIME + math.ceil(forward))
        return cls(table=table, gpus=gpus)

    def mem(self, rule: str):  # noqa: ANN201 - a Snakemake resource callable
        return _by_attempt(self.table[rule][0])

    def runtime(self, rule: str):  # noqa: ANN201 - a Snakemake resource callable
        return _by_attempt(self.table[rule][1])


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _by_attempt(base: int):  # noqa: ANN202 - a Snakemake resource callable
    """`base` on the first attempt, `base * attempt` on retries (a profile's `retries:`)."""

    def by_attempt(wildcards: Any, attempt: int) -> int:
        return base * attempt

    return by_attempt
