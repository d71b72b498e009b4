"""A trained fold read back from its folder: what `mmfusion predict` (from a bundle) and Fig. 3
(from `results/models/{variant}/fold{k}`) score with.

A fold folder holds `scoring.json` (threshold, temperature, recalibration, seed, batch size,
model settings and tabular widths: `mmfusion.train.fold.write_scoring`), `preprocessor.json`
(the fitted in-fold `FoldPreprocessor`) and the weights (`model.pt` for deep variants, read
with `torch.load(weights_only=True)`; `baseline.npz` for baselines).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmfusion.cohort.preprocess import FoldPreprocessor
from mmfusion.errors import ConfigError

# torch-free (the bundle command reads these records): the model is built lazily
PREPROCESSOR_FILE = "preprocessor.json"  # the fitted FoldPreprocessor (to_dict), per fold
SCORING_FILE = "scoring.json"  # threshold, recalibration, settings: what scoring needs


def read_record(path: Path, what: str) -> dict[str, Any]:
    """A fold's JSON record; a missing or broken one is a `ConfigError` saying what to do."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", path=str(path),
                          fix="retrain this fold with this mmfusion (it writes scoring.json "
                              "and preprocessor.json): snakemake --forcerun train_fold "
                              "train_baseline") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} is not JSON: {err}", path=str(path)) from err


@dataclass
class FoldModel:
    """One fold's model as stored: its folder, scoring record and preprocessor state."""

    fold: int
    folder: Path
    scoring: dict[str, Any]
    preprocessor: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.scoring["kind"])

    @property
    def seed(self) -> int:
        """The fold's training seed: the diffusion noise of its scores comes from it."""
        return int(self.scoring["seed"])

    @property
    def batch_size(self) -> int:
        return int(self.scoring["batch_size"])

    @property
    def amp(self) -> str:
        """The precision the fold's scores (and so its threshold, temperature and
        recalibration) were computed at: `off`, `bf16` or `fp16` (older records: `off`)."""
        return str(self.scoring.get("amp", "off"))

    def precision(self, device):  # -> mmfusion.train.device.Precision
        """The fold's precision on `device` (`precision_for`: off on the CPU), so that
        predict and Fig. 3 score at the precision the fold was fitted at."""
        from mmfusion.train.device import precision_for

        return precision_for(self.amp, device)

    def graph_backend(self, override: str | None = None) -> str:
        """`model.graph_backend` to score with: `override`, else the training run's (older
        records: `auto`)."""
        return override or str(self.scoring.get("model", {}).get("graph_backend", "auto"))


def load_fold_model(folder: str | Path, variant: str, fold: int) -> FoldModel:
    """The records of `variant` fold `fold` in `folder` (checked to be that fold's)."""
    folder = Path(folder)
    what = f"{variant} fold {fold}"
    scoring = read_record(folder / SCORING_FILE, f"scoring record of {what}")
    pre = read_record(folder / PREPROCESSOR_FILE, f"preprocessor of {what}")
    if scoring.get("variant") != variant or int(scoring.get("fold", -1)) != fold:
        raise ConfigError(f"scoring.json is for {scoring.get('variant')} fold "
                          f"{scoring.get('fold')}, not {what}", path=str(folder))
    return FoldModel(fold=fold, folder=folder, scoring=scoring, preprocessor=pre)


def fold_tables(fold: FoldModel, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """`frame`'s tabular groups through the fold's fitted preprocessor, checked against the
    widths the model was built with."""
    arrays = FoldPreprocessor.from_dict(fold.preprocessor).transform(frame)
    widths = fold.scoring.get("tabular_widths")
    if widths is not None:
        got = {g: int(a.shape[1]) for g, a in arrays.items()}
        if {g: int(w) for g, w in widths.items()} != got:
            raise ConfigError(f"fold {fold.fold}: preprocessed widths {got} differ from the "
                              f"model's {widths}", path=str(fold.folder))
    return arrays


def build_model(fold: FoldModel, device, graph_backend: str | None = None):
    """The fold's deep model (an `MMFusionModel`) from its settings and weights
    (`weights_only=True`), on `device`, in eval mode. `model.pretrained` is not read again:
    the weights hold the backbone. `graph_backend` overrides the training run's
    `model.graph_backend` (both backends load the same weights)."""
    import torch

    from mmfusion.model.mmfusion import MMFusionModel, ModelConfig

    if fold.kind != "deep":
        raise ConfigError(f"fold {fold.fold} is a {fold.kind} model, not a deep one",
                          path=str(fold.folder))
    settings = {**fold.scoring["model"], "pretrained": "", "freeze_backbone": False,
                "graph_backend": fold.graph_backend(graph_backend)}
    model = MMFusionModel(ModelConfig(**settings), fold.scoring["tabular_widths"],
                          device=device)
    state = torch.load(fold.folder / fold.scoring["weights"], map_location=device,
                       weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
