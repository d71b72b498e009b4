"""CFD reverse trajectories of the test patients (paper Fig. 3): analysis and tables.

The trajectories themselves are inference (`mmfusion.train.trajectory`): every fold model
of a diffusion variant (`mmfusion` and its Table 3 ablations) runs its **test** patients
through the reverse process (eq. 3) with the one scoring function, so the last step is the
very sample set that scored the patient (`predictions.csv`), and writes one file per fold
(`FoldTrajectory.save`, `trajectory_file`). This module only reads those files, analyses
and plots them.

Representation of a patient at reverse step t (paper t = T..1; `T` = `model.timesteps`):
the noise network's last hidden layer (`model.diffusion_hidden` wide, the input of its
output layer) while it denoises y_t, i.e. a function of the patient's HGA features, its
guide prediction ŷ, its current y_t and t, averaged over the patient's S samples: the
"denoised multi-modal feature embedding" of the paper's Fig. 3. (y_t itself is 2-D, one
value per class: a t-SNE of it would only distort it, so it is drawn in its own
coordinates, from y_T to y_0, in `fig3/{variant}_fold{k}_y_t.png`.) At each of `n_steps`
steps (evenly spaced from T to 1, both included) this module computes:

- the Davies–Bouldin score of the two label classes on that same representation
  (`davies_bouldin`, lower = better separated), on its t-SNE embedding
  (`davies_bouldin_tsne`) and on y_t at the same step (`davies_bouldin_y_t`); NaN when a
  class is absent from the test split (or fewer patients than classes + 1);
- a 2-D t-SNE embedding of the representation (scikit-learn, fixed `random_state`,
  perplexity min(30, (n - 1) / 3)); none for fewer than `MIN_TSNE` patients.

Trajectory files written before the hidden features were captured hold y_t only: they are
analysed on y_t at t = T..0, as this module used to (`FoldTrajectory.hidden` None).

`build_fig3` reads the fold files and writes `fig3_davies_bouldin.csv` (one row per
variant x fold x step), `fig3/representations.csv` (per patient and step),
`fig3/info.json` (the settings used) and the figures
(`mmfusion.report.figures.plot_trajectory_fold`, `plot_davies_bouldin`). Plotting lives
in `figures`; nothing here draws.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmfusion.errors import ConfigError
from mmfusion.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_STEPS = 6  # steps shown: T, ..., 0 evenly spaced
TSNE_SEED = 0  # t-SNE random_state
MIN_TSNE = 4  # fewer test patients: no t-SNE (its perplexity needs n > 3 (n - 1) / 3)
TABLE = "fig3_davies_bouldin.csv"
FOLDER = "fig3"
DB_COLUMNS = ["variant", "fold", "step", "davies_bouldin", "davies_bouldin_tsne",
              "n_patients", "n_positive", "davies_bouldin_y_t"]
REPRESENTATION = ("the CFD noise network's last hidden layer (input of its output layer) "
                  "while it denoises y_t at reverse step t = T..1, averaged over the "
                  "patient's reverse-process samples: a function of the patient's HGA "
                  "features, guide prediction, current y_t and t")
Y_T_REPRESENTATION = ("mean over the patient's reverse-process samples of the denoised label "
                      "vector y_t (class N0, class N+ components); t = T: the prior draw "
                      "y_T ~ N(guide prediction, I), t = 0: the final y_0")


@dataclass
class FoldTrajectory:
    """One fold model's reverse trajectories of its test patients.

    `states` `(T + 1, N, y_dim)`: mean over samples of y_t, rows in step order t = T..0;
    `probability` `(N,)`: the class-1 probability of the final samples (as scored);
    `hidden` `(T, N, H)`: mean over samples of the noise network's hidden features while
    it denoises y_t, rows in step order t = T..1 (None in older files).
    """

    variant: str
    fold: int
    patient_ids: list[str]
    labels: np.ndarray
    states: np.ndarray
    probability: np.ndarray
    seed: int
    n_samples: int
    hidden: np.ndarray | None = None

    @property
    def timesteps(self) -> int:
        return self.states.shape[0] - 1

    def at(self, step: int) -> np.ndarray:
        """y_t `(N, y_dim)` at paper step t = `step` (T..0)."""
        return self.states[self.timesteps - step]

    def representation(self, step: int) -> np.ndarray:
        """What Fig. 3 embeds at step t: the hidden features `(N, H)` (t = T..1), or y_t
        for files without them."""
        if self.hidden is None:
            return self.at(step)
        if not 1 <= step <= self.timesteps:
            raise ConfigError(f"hidden features exist for steps {self.timesteps}..1, not {step}")
        return self.hidden[self.timesteps - step]

    def steps(self, n_steps: int = DEFAULT_STEPS) -> list[int]:
        """Steps shown: T..1 with hidden features, T..0 without."""
        if self.hidden is None:
            return select_steps(self.timesteps, n_steps)
        return [s + 1 for s in select_steps(self.timesteps - 1, n_steps)]

    def save(self, path: str | Path) -> None:
        """One `.npz` (no pickles), written atomically."""
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, variant=np.array(self.variant), fold=np.array(self.fold),
                     patient_ids=np.array(self.patient_ids, dtype=str),
                     labels=np.asarray(self.labels, np.int64),
                     states=np.asarray(self.states, np.float32),
                     probability=np.asarray(self.probability, np.float64),
                     seed=np.array(self.seed), n_samples=np.array(self.n_samples),
                     **({} if self.hidden is None
                        else {"hidden": np.asarray(self.hidden, np.float32)}))

    @classmethod
    def load(cls, path: str | Path) -> FoldTrajectory:
        with np.load(path, allow_pickle=False) as z:
            return cls(str(z["variant"]), int(z["fold"]), [str(p) for p in z["patient_ids"]],
                       z["labels"], z["states"], z["probability"], int(z["seed"]),
                       int(z["n_samples"]), z["hidden"] if "hidden" in z.files else None)


def trajectory_file(out_dir: str | Path, variant: str, fold: int) -> Path:
    """Where `mmfusion.train.trajectory` writes a fold's trajectories under `out_dir`."""
    return Path(out_dir) / FOLDER / "trajectories" / f"{variant}_fold{fold}.npz"


def select_steps(timesteps: int, n_steps: int = DEFAULT_STEPS) -> list[int]:
    """`n_steps` steps evenly spaced from T down to 0 (both included; at most T + 1)."""
    if n_steps < 2:
        raise ConfigError(f"need at least 2 trajectory steps (T and 0), got {n_steps}",
                          fix="pass --steps 2 or more")
    grid = np.linspace(timesteps, 0, min(n_steps, timesteps + 1))
    return sorted({int(round(v)) for v in grid}, reverse=True)


def davies_bouldin(x: np.ndarray, labels: np.ndarray) -> float:
    """Davies–Bouldin score of the label classes of the rows of `x` `(N, d)` (lower: better
    separated); NaN when fewer than 2 classes are present or N <= the number of classes."""
    from sklearn.metrics import davies_bouldin_score

    n_classes = len(np.unique(labels))
    if n_classes < 2 or len(labels) <= n_classes:
        return math.nan
    return float(davies_bouldin_score(np.asarray(x, dtype=np.float64), labels))


def tsne_perplexity(n: int) -> float:
    """Perplexity for `n` points: min(30, (n - 1) / 3), scikit-learn's needs n > perplexity."""
    return float(min(30.0, (n - 1) / 3))


def tsne_embedding(x: np.ndarray, seed: int = TSNE_SEED) -> np.ndarray | None:
    """2-D t-SNE of the rows of `x` `(N, d)`; None for fewer than `MIN_TSNE` rows; all
    zeros when the rows are identical (nothing to embed)."""
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float64)
    if len(x) < MIN_TSNE:
        return None
    if np.ptp(x, axis=0).max() == 0:
        return np.zeros((len(x), 2))
    return TSNE(n_components=2, perplexity=tsne_perplexity(len(x)), init="pca",
                learning_rate="auto", random_state=seed).fit_transform(x)


def analyse(traj: FoldTrajectory, steps: Sequence[int], tsne_seed: int = TSNE_SEED
            ) -> tuple[list[dict], pd.DataFrame]:
    """Per step: the Davies–Bouldin row; and the per-patient table (representation, t-SNE
    coordinates, NaN where no t-SNE)."""
    rows, parts = [], []
    n_pos = int((traj.labels == 1).sum())
    for step in steps:
        x, y_t = traj.representation(step), traj.at(step)
        emb = tsne_embedding(x, tsne_seed)
        rows.append({"variant": traj.variant, "fold": traj.fold, "step": step,
                     "davies_bouldin": davies_bouldin(x, traj.labels),
                     "davies_bouldin_tsne": (math.nan if emb is None
                                             else davies_bouldin(emb, traj.labels)),
                     "n_patients": len(traj.labels), "n_positive": n_pos,
                     "davies_bouldin_y_t": davies_bouldin(y_t, traj.labels)})
        emb = np.full((len(x), 2), np.nan) if emb is None else emb
        part = pd.DataFrame({"variant": traj.variant, "fold": traj.fold, "step": step,
                             "patient_id": traj.patient_ids, "label": traj.labels})
        for j in range(y_t.shape[1]):
            part[f"y_t_{j}"] = y_t[:, j]
        part["tsne_1"], part["tsne_2"] = emb[:, 0], emb[:, 1]
        parts.append(part)
    return rows, pd.concat(parts, ignore_index=True)


def fold_figure(out_dir: str | Path, variant: str, fold: int) -> Path:
    return Path(out_dir) / FOLDER / f"{variant}_fold{fold}.png"


def y_t_figure(out_dir: str | Path, variant: str, fold: int) -> Path:
    return Path(out_dir) / FOLDER / f"{variant}_fold{fold}_y_t.png"


def db_figure(out_dir: str | Path, variant: str) -> Path:
    return Path(out_dir) / FOLDER / f"{variant}_davies_bouldin.png"


def build_fig3(variants: Sequence[str], folds: Sequence[int], out_dir: str | Path,
               n_steps: int = DEFAULT_STEPS, tsne_seed: int = TSNE_SEED) -> pd.DataFrame:
    """Fig. 3 of every variant and fold from the trajectory files under `out_dir`
    (results/report; `trajectory_file`): `fig3_davies_bouldin.csv`,
    `fig3/{variant}_fold{k}.png`, `fig3/{variant}_fold{k}_y_t.png`,
    `fig3/{variant}_davies_bouldin.png`,
    `fig3/representations.csv`, `fig3/info.json`. Returns the Davies–Bouldin table."""
    import sklearn

    from mmfusion.report import figures

    out = Path(out_dir)
    rows: list[dict] = []
    parts, info = [], {"representation": REPRESENTATION,
                       "y_t": Y_T_REPRESENTATION, "tsne_random_state": tsne_seed,
                       "tsne_min_patients": MIN_TSNE, "scikit_learn": sklearn.__version__,
                       "folds": []}
    for variant in variants:
        for fold in folds:
            path = trajectory_file(out, variant, fold)
            if not path.is_file():
                raise ConfigError(f"no reverse trajectories of {variant} fold {fold}",
                                  path=str(path),
                                  fix="run `mmfusion trajectory` (it computes them first)")
            traj = FoldTrajectory.load(path)
            steps = traj.steps(n_steps)
            fold_rows, table = analyse(traj, steps, tsne_seed)
            rows += fold_rows
            parts.append(table)
            figures.plot_trajectory_fold(table, fold_rows, fold_figure(out, variant, fold))
            figures.plot_y_t_paths(traj.states, traj.labels, y_t_figure(out, variant, fold),
                                   f"{variant} fold {fold}")
            info["folds"].append({"variant": variant, "fold": fold, "steps": steps,
                                  "timesteps": traj.timesteps, "n_samples": traj.n_samples,
                                  "sampling_seed": traj.seed,
                                  "n_patients": len(traj.labels),
                                  "embedded": ("hidden features" if traj.hidden is not None
                                               else "y_t"),
                                  "trajectories": str(path.relative_to(out)),
                                  "tsne_perplexity": (tsne_perplexity(len(traj.labels))
                                                      if len(traj.labels) >= MIN_TSNE
                                                      else None)})
            log.info("%s fold %d: %d test patients, Davies-Bouldin %s", variant, fold,
                     len(traj.labels), ", ".join(f"t={r['step']}: {r['davies_bouldin']:.3f}"
                                                 for r in fold_rows))
        db = pd.DataFrame([r for r in rows if r["variant"] == variant], columns=DB_COLUMNS)
        figures.plot_davies_bouldin(db, db_figure(out, variant))
    result = pd.DataFrame(rows, columns=DB_COLUMNS)
    with atomic_path(out / TABLE) as tmp:
        result.to_csv(tmp, index=False, float_format="%.6f", na_rep="NaN")
    with atomic_path(out / FOLDER / "representations.csv") as tmp:
        pd.concat(parts, ignore_index=True).to_csv(tmp, index=False, float_format="%.6f",
                                                   na_rep="NaN")
    write_text_atomic(out / FOLDER / "info.json", json.dumps(info, indent=1) + "\n")
    return result
