"""Build and load a model bundle: `results/bundle/{variant}/`.

Layout (every file listed with its sha256 in `manifest.json`, written last):

    bundle.json            variant, folds, thresholds, temperatures, recalibrations, the
                           ensemble rule
    settings.json          the settings the stages used: cohort keys, tables, rois,
                           convert, crop, radiomics (params -> radiomics_params.yaml),
                           preprocess, model, train
    config.resolved.yaml   the training run's whole resolved config
    feature_spec.json      the cohort's feature spec (columns, levels, flags)
    radiomics_params.yaml  the PyRadiomics params file the features were extracted with
    versions.json          python and package versions of the training environment
    README.md              contents, the ensemble rule, how to use it
    fold{k}/scoring.json   threshold, temperature, recalibration (validation-fitted map of
                           the probability), model settings and widths of fold k
    fold{k}/preprocessor.json  the fitted in-fold preprocessor (FoldPreprocessor.to_dict)
    fold{k}/model.pt       deep variants: {"model": state dict, ...} (weights_only=True)
    fold{k}/baseline.npz   baselines: the fitted parameters as arrays (no pickle)

Repeated cross-validation (`folds.repeats` = R): folds 0 .. R*K-1, every one a model of the
ensemble. Several training seeds (`train.seeds` = S > 1): every seed of every fold is a
model, `fold{k}/seed{s}/` (same files), listed in bundle.json `members`; the ensemble is
the mean over every model, so over all R x K x S of them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmfusion.errors import ConfigError
from mmfusion.io import atomic_dir
from mmfusion.predict.manifest import verify_manifest, write_manifest
from mmfusion.predict.readme import bundle_readme
from mmfusion.train.trained_fold import FoldModel, read_record

__all__ = ["Bundle", "FoldModel", "build_bundle", "load_bundle", "version_differences"]

PACKAGES = ("mmfusion", "torch", "dgl", "numpy", "scikit-learn", "pyradiomics-bhklab",
            "SimpleITK", "pydicom")
SETTINGS_SECTIONS = ("tables", "rois", "convert", "crop", "radiomics", "preprocess",
                     "model", "train")
COHORT_KEYS = ("id_column", "label_column", "positive_value")
PARAMS_NAME = "radiomics_params.yaml"
MAX_EXPORT_DIFF = 1e-9  # a baseline's arrays must reproduce the fitted model's scores
ENSEMBLE = {
    "probability": "mean over the folds' models of each model's probability, recalibrated "
                   "by that fold's validation-fitted map (scoring.json recalibration: "
                   "sigmoid(slope * logit(p) + intercept), applied to the model's mean over "
                   "diffusion samples)",
    "uncertainty": "standard deviation of the recalibrated probabilities over folds x "
                   "diffusion samples (mmfusion; each fold's samples at that fold's "
                   "temperature, then through its map), over the folds' probabilities "
                   "otherwise",
    "decision": "1 when probability >= decision_threshold, the mean of the folds' "
                "validation-chosen (Youden) thresholds, chosen on each fold's recalibrated "
                "validation probabilities",
}


def software_versions() -> dict[str, str]:
    """Python and the packages scoring depends on (`not installed` when absent)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _copy_fold(variant: str, src: Path, dst: Path, fold: int) -> dict[str, Any]:
    scoring = read_record(src / "scoring.json", f"scoring record of {variant} fold {fold}")
    read_record(src / "preprocessor.json", f"preprocessor of {variant} fold {fold}")
    if scoring.get("variant") != variant or scoring.get("fold") != fold:
        raise ConfigError(f"scoring.json is for {scoring.get('variant')} fold "
                          f"{scoring.get('fold')}, not {variant} fold {fold}", path=str(src))
    dst.mkdir(parents=True)
    if scoring["kind"] == "deep":
        weights = [scoring["weights"]]
    else:
        if float(scoring.get("export_max_abs_diff", 1.0)) > MAX_EXPORT_DIFF:
            raise ConfigError(f"the exported parameters of {variant} fold {fold} do not "
                              "reproduce the fitted model "
                              f"(max difference {scoring.get('export_max_abs_diff')})",
                              path=str(src / "scoring.json"))
        weights = [scoring["parameters"]]
    for name in ("scoring.json", "preprocessor.json", *weights):
        if not (src / name).is_file():
            raise ConfigError(f"{name} of {variant} fold {fold} not found", path=str(src),
                              fix="retrain this fold")
        shutil.copyfile(src / name, dst / name)
    return scoring


def build_bundle(variant: str, models_dir: str | Path, config_yaml: str | Path,
                 spec_json: str | Path, out: str | Path,
                 radiomics_params: str | Path | None = None) -> Path:
    """Assemble `out` (atomically) from `models_dir` = `results/models/{variant}` and the
    run's resolved config and feature spec. `radiomics_params`: the params YAML the
    radiomics stage used (default: the config's, else the shipped one)."""
    import yaml

    config = yaml.safe_load(Path(config_yaml).read_text())
    n_folds = int(config["folds"]["n_folds"]) * int(config["folds"].get("repeats", 1))
    n_seeds = int(config["train"].get("seeds", 1))
    members = ([(k, f"fold{k}") for k in range(n_folds)] if n_seeds == 1 else
               [(k, f"fold{k}/seed{s}") for k in range(n_folds) for s in range(n_seeds)])
    if radiomics_params is None:
        from mmfusion.features.radiomics import RadiomicsSettings

        radiomics_params = RadiomicsSettings.from_config(config["radiomics"]).params_path
    with atomic_dir(out) as tmp:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # a folder to share, not mkdtemp's private 0700
        folds = [_copy_fold(variant, Path(models_dir) / d, tmp / d, k) for k, d in members]
        settings = {"cohort": {k: config["cohort"][k] for k in COHORT_KEYS},
                    **{s: config[s] for s in SETTINGS_SECTIONS}}
        settings["radiomics"] = {**settings["radiomics"], "params": PARAMS_NAME}
        settings["train"] = {k: v for k, v in settings["train"].items()
                             if k not in ("gpus_per_job", "seeds")}
        shutil.copyfile(radiomics_params, tmp / PARAMS_NAME)
        shutil.copyfile(config_yaml, tmp / "config.resolved.yaml")
        shutil.copyfile(spec_json, tmp / "feature_spec.json")
        thresholds = [float(f["threshold"]) for f in folds]
        info = {"variant": variant, "kind": folds[0]["kind"], "n_folds": n_folds,
                "thresholds": thresholds,
                "decision_threshold": sum(thresholds) / len(thresholds),
                "temperatures": [f.get("temperature") for f in folds],
                "recalibrations": [f.get("recalibration") for f in folds],
                "label_column": config["cohort"]["label_column"],
                "positive_value": config["cohort"]["positive_value"],
                "ensemble": ENSEMBLE}
        if n_seeds > 1:  # every seed of every fold (a bundle without seeds stays as it was)
            info.update(seeds=n_seeds, members=[d for _, d in members])
        versions = software_versions()
        for name, value in (("bundle.json", info), ("settings.json", settings),
                            ("versions.json", versions)):
            (tmp / name).write_text(json.dumps(value, indent=1) + "\n")
        (tmp / "README.md").write_text(bundle_readme(info, settings, versions))
        write_manifest(tmp, {"variant": variant, "n_folds": n_folds})
    return Path(out)


@dataclass
class Bundle:
    """A verified bundle (`load_bundle`)."""

    path: Path
    info: dict[str, Any]
    settings: dict[str, Any]
    spec: dict[str, Any]
    versions: dict[str, str]
    folds: list[FoldModel] = field(default_factory=list)

    @property
    def variant(self) -> str:
        return str(self.info["variant"])

    @property
    def decision_threshold(self) -> float:
        return float(self.info["decision_threshold"])

    def section(self, name: str) -> dict[str, Any]:
        """A stage's settings as trained; `radiomics.params` points into the bundle."""
        section = dict(self.settings[name])
        if name == "radiomics":
            section["params"] = str(self.path / PARAMS_NAME)
        return section


def load_bundle(path: str | Path) -> Bundle:
    """Verify the manifest's checksums, then read the bundle's records (weights are read
    later, by `mmfusion.predict.ensemble`, with `torch.load(weights_only=True)`).

    Raises:
        ConfigError: not a bundle, a checksum mismatch, a file missing or added.
    """
    root = Path(path)
    verify_manifest(root)
    info = json.loads((root / "bundle.json").read_text())
    bundle = Bundle(path=root, info=info,
                    settings=json.loads((root / "settings.json").read_text()),
                    spec=json.loads((root / "feature_spec.json").read_text()),
                    versions=json.loads((root / "versions.json").read_text()))
    members = info.get("members") or [f"fold{k}" for k in range(int(info["n_folds"]))]
    for name in members:
        folder = root / name
        bundle.folds.append(FoldModel(
            fold=int(name.split("/")[0].removeprefix("fold")), folder=folder,
            scoring=json.loads((folder / "scoring.json").read_text()),
            preprocessor=json.loads((folder / "preprocessor.json").read_text())))
    return bundle


def version_differences(bundle: Bundle) -> list[str]:
    """`package: bundle version -> this version` for every package that differs."""
    here = software_versions()
    return [f"{name}: {old} -> {here.get(name, 'not installed')}"
            for name, old in bundle.versions.items() if here.get(name) != old]
