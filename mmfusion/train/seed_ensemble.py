"""Several training seeds per fold (`train.seeds` = S): the seeds, and the fold's ensemble.

Seed s of a fold trains with `training_seed(train.seed, s)`: seed 0 is `train.seed` itself
(so S = 1 trains exactly the model of a run without seeds), seed s > 0 a 31-bit seed hashed
from (train.seed, s). The seed drives the initialisation, the shuffling, the augmentation
and the diffusion noise of the model's scores, and it is the same for every fold (as
`train.seed` is today).

With S > 1 each seed's model lives in `models/{variant}/fold{k}/seed{s}/` with its own
`metrics.json`, `predictions.csv`, `val_predictions.csv` and weights, and `ensemble_seeds`
writes the fold's own `predictions.csv`, `val_predictions.csv` and `metrics.json` in
`models/{variant}/fold{k}/`:

- probability: the mean over the S seeds of each seed's **recalibrated** probability (its
  own validation-fitted map). Each seed's raw scale is its own (a network trained for a few
  dozen epochs may put every patient near 0, another near 0.3); after its map all seeds are
  on the validation split's probability scale, so the mean weighs them equally. It is also
  the rule a bundle uses across its models (`mmfusion.predict.ensemble`). Averaging logits
  instead would let the most extreme seed dominate and no longer be the bundle's rule;
- probability_raw: the mean of the seeds' raw probabilities (for reference only);
- uncertainty: sqrt(mean_s u_s² + var_s p_s), the spread over seeds x diffusion samples by
  the law of total variance (u_s: seed s's own spread over its samples, 0 without
  diffusion, so then the spread across seeds);
- threshold: Youden's J on the ensemble's validation probabilities; the test split is then
  scored once with it, as every fold is.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfusion.errors import ConfigError
from mmfusion.io import write_text_atomic
from mmfusion.train.metrics import binary_metrics, json_safe, youden_threshold

ENSEMBLE_RULE = ("mean over the fold's training seeds of each seed's recalibrated "
                 "probability; threshold: Youden's J on the ensemble's validation "
                 "probabilities; uncertainty: sqrt(mean of the seeds' squared sample spreads "
                 "+ variance of their probabilities)")


def training_seed(base_seed: int, index: int) -> int:
    """Seed of training run `index` (0 .. S-1) of a fold: `base_seed` for index 0, else a
    31-bit seed hashed from (base_seed, index) by numpy's SeedSequence."""
    if index < 0:
        raise ConfigError(f"seed index must be >= 0, got {index}")
    if index == 0:
        return int(base_seed)
    state = np.random.SeedSequence([int(base_seed), int(index)], spawn_key=(0x5EED,))
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)


def member_dir(fold_dir: str | Path, index: int) -> Path:
    """`models/{variant}/fold{k}/seed{index}`."""
    return Path(fold_dir) / f"seed{index}"


def _read(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {"patient_id": np.array([], str), "label": np.zeros(0, int),
                "probability": np.zeros(0), "probability_raw": np.zeros(0),
                "uncertainty": np.zeros(0)}
    return {"patient_id": np.array([r["patient_id"] for r in rows]),
            "label": np.array([int(r["label"]) for r in rows]),
            **{k: np.array([float(r[k]) for r in rows])
               for k in ("probability", "probability_raw", "uncertainty")}}


def combine_members(members: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The ensemble of one split's member predictions (same patients, same order): mean
    recalibrated probability, mean raw probability, total-variance uncertainty."""
    first = members[0]
    for m in members[1:]:
        if not (np.array_equal(m["patient_id"], first["patient_id"])
                and np.array_equal(m["label"], first["label"])):
            raise ConfigError("the seeds of one fold scored different patients",
                              fix="retrain the fold's seeds from the same folds.tsv")
    p = np.stack([m["probability"] for m in members])      # (S, N)
    u = np.stack([m["uncertainty"] for m in members])
    return {"patient_id": first["patient_id"], "label": first["label"],
            "probability": p.mean(axis=0),
            "probability_raw": np.stack([m["probability_raw"] for m in members]).mean(axis=0),
            "uncertainty": np.sqrt((u ** 2).mean(axis=0) + p.var(axis=0))}


def ensemble_seeds(member_dirs: Sequence[str | Path], out_dir: str | Path, variant: str,
                   fold: int) -> dict[str, Any]:
    """Write the fold's `val_predictions.csv`, `predictions.csv` and `metrics.json` in
    `out_dir` from its seeds' folders (see the module docstring). Returns the metrics."""
    from mmfusion.train.fold import write_predictions

    dirs = [Path(d) for d in member_dirs]
    if not dirs:
        raise ConfigError("no seed models to combine")
    out = Path(out_dir)
    combined, member_info = {}, []
    for split, name in (("val", "val_predictions.csv"), ("test", "predictions.csv")):
        combined[split] = combine_members([_read(d / name) for d in dirs])
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        if m.get("variant") != variant or m.get("fold") != fold:
            raise ConfigError(f"{d} holds {m.get('variant')} fold {m.get('fold')}, not "
                              f"{variant} fold {fold}", path=str(d))
        member_info.append({"dir": d.name, "seed": (m.get("settings") or {}).get(
            "train", {}).get("seed", (m.get("settings") or {}).get("seed")),
            "best_epoch": m.get("best_epoch"), "threshold": m.get("threshold"),
            "test_auc": m["test"].get("auc"), "test_brier": m["test"].get("brier")})
    val, test = combined["val"], combined["test"]
    threshold = youden_threshold(val["label"], val["probability"])
    for split, fname in (("val", "val_predictions.csv"), ("test", "predictions.csv")):
        c = combined[split]
        write_predictions(out / fname, list(c["patient_id"]), c["label"], fold, variant,
                          c["probability"], c["uncertainty"], c["probability_raw"])
    metrics = {"variant": variant, "fold": fold, "best_epoch": None, "threshold": threshold,
               "temperature": None, "monte_carlo": None,
               "test": binary_metrics(test["label"], test["probability"], threshold),
               "val": binary_metrics(val["label"], val["probability"], threshold),
               "n_seeds": len(dirs), "ensemble": ENSEMBLE_RULE, "members": member_info}
    write_text_atomic(out / "metrics.json",
                      json.dumps(json_safe(metrics), indent=1, allow_nan=False) + "\n")
    return metrics
