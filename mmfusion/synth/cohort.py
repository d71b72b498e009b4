"""Generate a synthetic cohort laid out exactly as a user would bring one.

    OUT/dicom/<patient>/CT/*.dcm         CT series (files named by SOPInstanceUID)
    OUT/dicom/<patient>/RTSTRUCT/*.dcm   structure set referencing that series
    OUT/clinical.csv                     patient_id, lnm, age, sex, kps, t_stage, ...
    OUT/hematology.csv                   patient_id, wbc, neutrophils, ..., ldh
    OUT/truth.csv                        true probability and logit (evaluation only)
    OUT/manifest.json                    settings and patient list; written last

The same settings and seed give byte-identical files. See `mmfusion.synth.latent` for
the label model.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmfusion.io import atomic_path, write_text_atomic
from mmfusion.settings import schema_defaults
from mmfusion.synth import latent as lm
from mmfusion.synth.dicom_writer import PatientHeader, write_ct_series, write_rtstruct
from mmfusion.synth.phantom import Phantom, PhantomSpec, build_phantom
from mmfusion.synth.shapes import Grid

log = logging.getLogger(__name__)

CLINICAL_COLUMNS = ["patient_id", "lnm", "age", "sex", "kps", "t_stage", "location",
                    "differentiation", "smoking", "drinking", "weight_loss", "dysphagia_grade"]
HEMATOLOGY_COLUMNS = ["patient_id", "wbc", "neutrophils", "lymphocytes", "monocytes",
                      "platelets", "hemoglobin", "albumin", "cea", "scc_ag", "crp", "ldh"]
# Share of values removed from the tables, as in real records.
_MISSING = {"kps": 0.03, "differentiation": 0.04, "smoking": 0.03, "monocytes": 0.03,
            "albumin": 0.03, "cea": 0.04, "scc_ag": 0.04, "crp": 0.05, "ldh": 0.03}
# Spellings seen in real exports; all are matched by the default `rois` regexes.
_TUMOUR_NAMES = ["GTV-T", "GTV_T", "GTVp", "GTV-T", "gtv_t", "GTV-Tumor"]
_NODE_STYLES = ["GTV-N{}", "GTV_N{}", "GTVn{}", "GTV-LN{}", "gtv-n{}"]
_MANUFACTURERS = ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "TOSHIBA"]
_FIRST = ["ALICE", "BORIS", "CHEN", "DANA", "EMIL", "FATIMA", "GUO", "HANNA", "IVAN", "JUN"]


@dataclass(frozen=True)
@schema_defaults("synth")
class SynthSettings:
    """Everything that determines a synthetic cohort (config section `synth`; defaults:
    the config schema)."""

    n_patients: int
    seed: int
    prevalence: float
    matrix: int
    n_slices: int
    pixel_spacing: float
    slice_thickness: float


    def __post_init__(self) -> None:
        if self.n_patients < 1:
            raise ValueError("n_patients must be >= 1")
        if not 0.0 < self.prevalence < 1.0:
            raise ValueError("prevalence must be in (0, 1)")
        if self.matrix * self.pixel_spacing < 320.0:
            raise ValueError(
                f"matrix * pixel_spacing = {self.matrix * self.pixel_spacing:.0f} mm; the "
                "phantom needs a field of view of at least 320 mm")
        if self.n_slices * self.slice_thickness < 150.0:
            raise ValueError("n_slices * slice_thickness must cover at least 150 mm")


def patient_id(index: int) -> str:
    return f"ESO-{index + 1:04d}"


@dataclass(frozen=True)
class CohortDraw:
    """Cohort-level draws: latent variables, true logits and labels."""

    latent: lm.LatentCohort
    logit: np.ndarray
    labels: np.ndarray
    parts: dict[str, np.ndarray]


def draw_cohort(settings: SynthSettings) -> CohortDraw:
    rng = np.random.default_rng(settings.seed)
    latent = lm.sample_latent(rng, settings.n_patients)
    logit = lm.true_logit(latent, settings.prevalence)
    labels = lm.draw_labels(rng, logit)
    return CohortDraw(latent, logit, labels, lm.logit_parts(latent))


def patient_phantom(settings: SynthSettings, index: int,
                    draw: CohortDraw | None = None) -> tuple[Phantom, PatientHeader]:
    """Rebuild patient `index` of a cohort: its phantom (with label volumes) and header."""
    draw = draw or draw_cohort(settings)
    lat = draw.latent
    rng = np.random.default_rng([settings.seed, index, 1])
    n_nodes = int(lat.n_nodes[index])
    spec = PhantomSpec(
        node_diameters=tuple(float(d) for d in lat.node_diameters[index, :n_nodes]),
        node_hu=tuple(float(h) for h in lat.node_hu[index, :n_nodes]),
        necrosis=bool(lat.necrosis[index]),
        thickness=float(lat.thickness[index]),
        length=float(lat.length[index]),
    )
    px, m = settings.pixel_spacing, settings.matrix
    half_length = (settings.n_slices - 1) / 2 * settings.slice_thickness
    grid = Grid(rows=m, cols=m, n_slices=settings.n_slices, pixel_spacing=px,
                slice_spacing=settings.slice_thickness,
                x0=-(m - 1) / 2 * px + rng.uniform(-5, 5),
                y0=-(m - 1) / 2 * px + rng.uniform(-5, 5),
                z0=rng.uniform(-450.0, -350.0) - half_length)
    style = _NODE_STYLES[rng.integers(len(_NODE_STYLES))]
    numbers = rng.permutation(n_nodes) + 1  # names do not follow size order
    names = {"tumour": _TUMOUR_NAMES[rng.integers(len(_TUMOUR_NAMES))],
             "nodes": [style.format(int(j)) for j in numbers]}
    phantom = build_phantom(rng, grid, spec, names)
    age = int(lat.clinical["age"][index])
    header = PatientHeader(
        patient_id=patient_id(index),
        patient_name=f"SYNTH^{_FIRST[index % len(_FIRST)]}^{index + 1:04d}",
        birth_date=f"{2024 - age:04d}{1 + index % 12:02d}{1 + index % 28:02d}",
        sex=str(lat.clinical["sex"][index]),
        study_date=f"2023{1 + (index * 7) % 12:02d}{1 + (index * 11) % 28:02d}",
        uid_seed=f"{settings.seed}-{index}",
        unsigned=bool(rng.random() < 0.5),
        descending=bool(rng.random() < 0.5),
        manufacturer=_MANUFACTURERS[int(rng.integers(len(_MANUFACTURERS)))],
    )
    return phantom, header


def _write_patient(args: tuple[SynthSettings, int, str]) -> dict:
    settings, index, dicom_root = args
    phantom, header = patient_phantom(settings, index)
    pdir = Path(dicom_root) / header.patient_id
    refs = write_ct_series(phantom, header, pdir / "CT")
    write_rtstruct(phantom, header, refs, pdir / "RTSTRUCT")
    return {"patient_id": header.patient_id, "ct_files": len(refs.sop_uids),
            "rois": [r.name for r in phantom.rois]}


def _tables(settings: SynthSettings, draw: CohortDraw) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                 pd.DataFrame]:
    lat, n = draw.latent, settings.n_patients
    ids = [patient_id(i) for i in range(n)]
    clinical = pd.DataFrame({"patient_id": ids, "lnm": draw.labels, **lat.clinical})
    clinical["age"] = clinical["age"].astype(int)
    hema = pd.DataFrame({"patient_id": ids, **lat.hematology})
    hema["platelets"] = hema["platelets"].round(0)
    for col in HEMATOLOGY_COLUMNS[1:]:
        hema[col] = hema[col].round(0 if col in ("platelets", "ldh") else 2)
    rng = np.random.default_rng([settings.seed, 99])
    for table in (clinical, hema):
        for col, share in _MISSING.items():
            if col in table:
                drop = rng.random(n) < share
                table[col] = table[col].astype(object).where(~drop, None)
    prob = 1.0 / (1.0 + np.exp(-draw.logit))
    truth = pd.DataFrame({
        "patient_id": ids, "lnm": draw.labels,
        "probability": prob.round(6), "logit": draw.logit.round(6),
        "logit_image": draw.parts["image"].round(6),
        "logit_clinical": draw.parts["clinical"].round(6),
        "logit_hematology": draw.parts["hematology"].round(6),
        "n_nodes": lat.n_nodes,
    })
    return clinical[CLINICAL_COLUMNS], hema[HEMATOLOGY_COLUMNS], truth


def generate_cohort(out: str | os.PathLike[str], settings: SynthSettings,
                    jobs: int = 1, progress: bool = True) -> Path:
    """Write the whole cohort under `out`; returns the manifest path (written last)."""
    out = Path(out)
    dicom_root = out / "dicom"
    dicom_root.mkdir(parents=True, exist_ok=True)
    draw = draw_cohort(settings)
    clinical, hema, truth = _tables(settings, draw)
    for name, table in (("clinical.csv", clinical), ("hematology.csv", hema),
                        ("truth.csv", truth)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False, lineterminator="\n")

    tasks = [(settings, i, str(dicom_root)) for i in range(settings.n_patients)]
    bar = tqdm(total=len(tasks), desc="synth patients", unit="patient", disable=not progress)
    records = []
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for rec in pool.map(_write_patient, tasks):
                records.append(rec)
                bar.update()
    else:
        for task in tasks:
            records.append(_write_patient(task))
            bar.update()
    bar.close()

    manifest = {
        "generator": "mmfusion synth",
        "settings": asdict(settings),
        "n_positive": int(draw.labels.sum()),
        "patients": records,
        "note": "truth.csv is for evaluation only; the pipeline never reads it",
    }
    path = out / "manifest.json"
    write_text_atomic(path, json.dumps(manifest, indent=1) + "\n")
    log.info("wrote %d patients (%d LNM-positive) to %s", settings.n_patients,
             manifest["n_positive"], out)
    return path
