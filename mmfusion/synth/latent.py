"""Label model of the synthetic demo cohort: who has lymph node metastasis, and why.

Every patient has a latent nodal-spread propensity `z ~ N(0, 1)`. Each modality sees it
through its own noisy copy, so the modalities carry overlapping (redundant) signal:

    z_img = 0.75 z + 0.66 e1      image: node count, largest node size, necrotic node,
                                  tumour thickness (and length)
    z_t   = 0.60 z + 0.80 e2      tumour size -> clinical T stage and dysphagia (redundant
                                  with the tumour image)
    z_h   = 0.60 z + 0.80 e3      hematology: neutrophil/lymphocyte ratio, SCC-Ag, CEA,
                                  albumin (and nuisance values)

The true log-odds is a fixed linear function of *observable* quantities only (what the
CT, the contours and the tables show), standardised with fixed constants:

    logit = b0 + S * ( 0.80 n_nodes + 0.70 d_max + 0.40 necrosis + 0.35 thickness
                     + 0.35 T_stage + 0.35 poor_differentiation - 0.10 age
                     + 0.45 log NLR + 0.40 log SCC-Ag + 0.25 log CEA - 0.25 albumin )

with S = `LOGIT_SCALE` and b0 solved so that the mean probability equals the requested
prevalence. The label is a Bernoulli draw from sigmoid(logit), so even a perfect model
(the oracle, scored from `truth.csv`) has an AUC well below 1 (about 0.85-0.92).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MAX_NODES = 5
LOGIT_SCALE = 0.95

# (mean, sd) used to standardise each observable inside the logit: fixed constants,
# measured once on a large reference draw, so a patient's truth never depends on the
# rest of its cohort.
_STANDARDISE = {
    "n_nodes": (1.36, 1.38),
    "d_max": (6.76, 5.34),
    "thickness": (14.1, 3.26),
    "t_stage": (2.34, 1.00),
    "age": (63.0, 8.0),
    "log_nlr": (0.86, 0.50),
    "log_scc": (0.26, 0.71),
    "log_cea": (0.92, 0.65),
    "albumin": (40.0, 3.64),
}
_WEIGHTS = {
    "n_nodes": 0.80,
    "d_max": 0.70,
    "necrosis": 0.40,
    "thickness": 0.35,
    "t_stage": 0.35,
    "poor": 0.35,
    "age": -0.10,
    "log_nlr": 0.45,
    "log_scc": 0.40,
    "log_cea": 0.25,
    "albumin": -0.25,
}
_IMAGE_TERMS = ("n_nodes", "d_max", "necrosis", "thickness")
_CLINICAL_TERMS = ("t_stage", "poor", "age")
_HEMATOLOGY_TERMS = ("log_nlr", "log_scc", "log_cea", "albumin")


@dataclass(frozen=True)
class LatentCohort:
    """Per-patient draws of the label model; every array has length n."""

    z: np.ndarray
    n_nodes: np.ndarray            # int, 0..MAX_NODES
    node_diameters: np.ndarray     # (n, MAX_NODES) short-axis diameters in mm, 0 if absent
    node_hu: np.ndarray            # (n, MAX_NODES) mean attenuation of each node's rim
    necrosis: np.ndarray           # int 0/1: the largest node has a necrotic (hypodense) centre
    thickness: np.ndarray          # max tumour radius in mm
    length: np.ndarray             # tumour length in mm
    clinical: dict[str, np.ndarray]
    hematology: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.z)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def sample_latent(rng: np.random.Generator, n: int) -> LatentCohort:
    """Draw `n` patients' latent variables and observables (vectorised)."""
    z = rng.standard_normal(n)
    z_img = 0.75 * z + 0.66 * rng.standard_normal(n)
    z_t = 0.60 * z + 0.80 * rng.standard_normal(n)
    z_h = 0.60 * z + 0.80 * rng.standard_normal(n)

    # --- image: lymph nodes -------------------------------------------------------------
    n_nodes = np.minimum(rng.poisson(np.exp(0.15 + 0.65 * z_img)), MAX_NODES)
    d_max = np.clip(9.0 + 3.0 * z_img + rng.normal(0, 2.0, n), 6.0, 24.0)
    shrink = np.cumprod(rng.uniform(0.6, 0.95, (n, MAX_NODES)), axis=1)
    shrink[:, 0] = 1.0
    diam = np.maximum(d_max[:, None] * shrink, 5.5)
    present = np.arange(MAX_NODES)[None, :] < n_nodes[:, None]
    diam = np.where(present, diam, 0.0)
    necrosis = ((d_max >= 10.0) & (rng.random(n) < _sigmoid(-1.0 + 1.5 * z_img))
                & (n_nodes > 0)).astype(int)
    node_hu = np.where(present, rng.normal(45.0, 6.0, (n, MAX_NODES)) - 4.0 * z_img[:, None],
                       0.0)

    # --- image: primary tumour ----------------------------------------------------------
    thickness = np.clip(14.0 + 3.5 * z_t, 9.0, 24.0)
    length = np.clip(55.0 + 15.0 * z_t + rng.normal(0, 10.0, n), 25.0, 110.0)

    # --- clinical -----------------------------------------------------------------------
    t_num = 1 + (thickness > 11.5).astype(int) + (thickness > 14.5) + (thickness > 18.0)
    shift = rng.choice([-1, 0, 1], size=n, p=[0.1, 0.8, 0.1])
    t_num = np.clip(t_num + shift, 1, 4)
    p_poor = _sigmoid(-0.9 + 0.9 * z)
    u = rng.random(n)
    differentiation = np.where(u < p_poor, "poor",
                               np.where(rng.random(n) < 0.6, "moderate", "well"))
    age = np.clip(rng.normal(63.0, 8.0, n), 38.0, 88.0).round(0)
    sex = np.where(rng.random(n) < 0.75, "M", "F")
    kps = rng.choice([70, 80, 90, 100], size=n, p=[0.1, 0.3, 0.4, 0.2])
    kps = np.where(age > 72, np.maximum(kps - 10, 60), kps)
    location = rng.choice(["upper", "middle", "lower"], size=n, p=[0.2, 0.5, 0.3])
    smoking = rng.choice(["never", "former", "current"], size=n, p=[0.35, 0.35, 0.30])
    drinking = np.where(rng.random(n) < 0.45, "yes", "no")
    weight_loss = np.where(rng.random(n) < _sigmoid(-1.0 + 0.5 * z), "yes", "no")
    dysphagia = np.clip(np.round(1.0 + 0.6 * z_t + rng.normal(0, 0.8, n)), 0, 4).astype(int)
    clinical = {
        "age": age, "sex": sex, "kps": kps, "t_stage": np.char.add("T", t_num.astype(str)),
        "location": location, "differentiation": differentiation, "smoking": smoking,
        "drinking": drinking, "weight_loss": weight_loss, "dysphagia_grade": dysphagia,
    }

    # --- hematology (10^9/L, g/L, ng/mL, mg/L, U/L) --------------------------------------
    lymph = np.exp(rng.normal(np.log(1.6), 0.3, n) - 0.12 * z_h)
    neut = np.exp(rng.normal(np.log(3.8), 0.3, n) + 0.15 * z_h)
    mono = np.exp(rng.normal(np.log(0.45), 0.3, n))
    hematology = {
        "wbc": neut + lymph + mono + rng.uniform(0.1, 0.4, n),
        "neutrophils": neut,
        "lymphocytes": lymph,
        "monocytes": mono,
        "platelets": rng.normal(240.0, 55.0, n) + 15.0 * z_h,
        "hemoglobin": rng.normal(132.0, 13.0, n) - 4.0 * z_h + np.where(sex == "M", 8.0, 0.0),
        "albumin": rng.normal(40.0, 3.3, n) - 1.5 * z_h,
        "cea": np.exp(rng.normal(np.log(2.5), 0.55, n) + 0.35 * z_h),
        "scc_ag": np.exp(rng.normal(np.log(1.3), 0.55, n) + 0.45 * z_h),
        "crp": np.exp(rng.normal(np.log(4.0), 0.9, n) + 0.3 * z_h),
        "ldh": rng.normal(180.0, 35.0, n),
    }
    return LatentCohort(z=z, n_nodes=n_nodes, node_diameters=diam, node_hu=node_hu,
                        necrosis=necrosis, thickness=thickness, length=length,
                        clinical=clinical, hematology=hematology)


def _terms(c: LatentCohort) -> dict[str, np.ndarray]:
    """The observables entering the logit, standardised."""
    t_num = np.char.lstrip(c.clinical["t_stage"].astype(str), "T").astype(float)
    raw = {
        "n_nodes": c.n_nodes.astype(float),
        "d_max": c.node_diameters[:, 0],
        "thickness": c.thickness,
        "t_stage": t_num,
        "age": c.clinical["age"],
        "log_nlr": np.log(c.hematology["neutrophils"] / c.hematology["lymphocytes"]),
        "log_scc": np.log(c.hematology["scc_ag"]),
        "log_cea": np.log(c.hematology["cea"]),
        "albumin": c.hematology["albumin"],
    }
    terms = {k: (v - _STANDARDISE[k][0]) / _STANDARDISE[k][1] for k, v in raw.items()}
    terms["necrosis"] = c.necrosis.astype(float)
    terms["poor"] = (c.clinical["differentiation"] == "poor").astype(float)
    return terms


def logit_parts(c: LatentCohort) -> dict[str, np.ndarray]:
    """Each modality's share of the (scaled) logit, without the intercept."""
    terms = _terms(c)

    def part(names: tuple[str, ...]) -> np.ndarray:
        return LOGIT_SCALE * sum(_WEIGHTS[k] * terms[k] for k in names)

    return {"image": part(_IMAGE_TERMS), "clinical": part(_CLINICAL_TERMS),
            "hematology": part(_HEMATOLOGY_TERMS)}


@functools.lru_cache(maxsize=32)
def intercept_for(prevalence: float) -> float:
    """Intercept b0 giving mean probability `prevalence` on a fixed large reference draw."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    ref = sample_latent(np.random.default_rng(20240601), 40_000)
    base = sum(logit_parts(ref).values())
    lo, hi = -20.0, 20.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _sigmoid(base + mid).mean() < prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def true_logit(c: LatentCohort, prevalence: float) -> np.ndarray:
    """The true log-odds of lymph node metastasis of each patient."""
    return intercept_for(prevalence) + sum(logit_parts(c).values())


def draw_labels(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    """Bernoulli labels from the true probabilities."""
    return (rng.random(len(logit)) < _sigmoid(logit)).astype(int)
