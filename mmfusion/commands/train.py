"""`mmfusion train cache|features|fold`: the patch cache, the frozen backbone's feature
cache, and one variant trained on one fold."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mmfusion.settings import parse_settings_json as section_json

if TYPE_CHECKING:
    from mmfusion.model.mmfusion import ModelConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="patch cache; train/evaluate a variant on a fold",
                              description="Train stage: `cache` stacks every patient's "
                              "patches.npz into memory-mapped arrays; `features` runs a "
                              "frozen (pretrained) backbone once over them "
                              "(model.freeze_backbone); `fold` trains one "
                              "variant (base1, base2, base3, mmfusion, logreg, gbm) on one "
                              "fold and scores its test split once.")
    sub = p.add_subparsers(dest="train_command", metavar="ACTION", required=True)

    c = sub.add_parser("cache", help="memory-mapped patch cache from patches.npz files")
    c.add_argument("--table", required=True, help="cohort table.tsv (its patients are cached)")
    c.add_argument("--patients-dir", required=True, help="{results}/patients")
    c.add_argument("--out", required=True, help="cache folder")
    c.set_defaults(func=run_cache)

    e = sub.add_parser("features", help="frozen backbone's feature maps of every patient",
                       description="Run the backbone (pretrained weights of model.pretrained, "
                       "else a random one seeded by train.seed) once, in eval mode, over "
                       "every patient's un-augmented patches; `train fold --features` then "
                       "trains everything but the backbone on these maps. Reuses OUT when "
                       "its settings match.")
    e.add_argument("--cache", required=True, help="patch cache folder (`train cache`)")
    e.add_argument("--model-settings", default="{}", help="the `model` section as JSON")
    e.add_argument("--train-settings", default="{}",
                   help="the `train` section as JSON (seed, device, batch_size, progress)")
    e.add_argument("--out", required=True, help="feature cache folder")
    e.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default: all cores)")
    e.set_defaults(func=run_features)

    f = sub.add_parser("fold", help="train one variant on one fold")
    f.add_argument("--table", required=True, help="cohort table.tsv")
    f.add_argument("--spec", required=True, help="cohort feature_spec.json")
    f.add_argument("--folds", required=True, help="cohort folds.tsv")
    f.add_argument("--cache", help="patch cache folder (deep variants)")
    f.add_argument("--features", help="feature cache folder (`train features`; required "
                   "with model.freeze_backbone, which then trains on it)")
    f.add_argument("--fold", type=int, required=True)
    f.add_argument("--variant", required=True)
    f.add_argument("--model-settings", default="{}", help="the `model` section as JSON")
    f.add_argument("--train-settings", default="{}", help="the `train` section as JSON")
    f.add_argument("--preprocess-settings", default="{}",
                   help="the `preprocess` section as JSON")
    f.add_argument("--out", required=True, help="output folder models/{variant}/fold{k}")
    f.add_argument("--seed-index", type=int, default=0,
                   help="training run s of this fold (train.seeds): trains with the seed "
                   "derived from train.seed (0 = train.seed itself; "
                   "mmfusion.train.seed_ensemble.training_seed)")
    f.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    f.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default: all cores); the "
                   "workflow passes the rule's threads so parallel jobs do not oversubscribe")
    f.set_defaults(func=run_fold)

    s = sub.add_parser("ensemble", help="a fold's prediction from its training seeds",
                       description="With train.seeds > 1: the mean of the seeds' "
                       "recalibrated probabilities (models/{variant}/fold{k}/seed{s}/), the "
                       "threshold chosen on the ensemble's validation probabilities, test "
                       "scored once; writes predictions.csv, val_predictions.csv and "
                       "metrics.json in --out (mmfusion/train/seed_ensemble.py).")
    s.add_argument("--members", nargs="+", required=True, help="the seeds' folders")
    s.add_argument("--variant", required=True)
    s.add_argument("--fold", type=int, required=True)
    s.add_argument("--out", required=True, help="the fold's folder models/{variant}/fold{k}")
    s.set_defaults(func=run_ensemble)


def run_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from mmfusion.train.dataset import build_patch_cache

    ids = pd.read_csv(args.table, sep="\t", dtype={"patient_id": str})["patient_id"].tolist()
    paths = [Path(args.patients_dir) / pid / "patches.npz" for pid in ids]
    build_patch_cache(ids, paths, args.out)
    print(f"train cache: {len(ids)} patients -> {args.out}")
    return 0


def _model_config(text: str, variant: str | None = None) -> ModelConfig:
    """The `model` section given as JSON (with the variant of this run)."""
    from mmfusion.model.mmfusion import ModelConfig

    section = section_json(text, "--model-settings")
    return ModelConfig.from_config({**section, **({"variant": variant} if variant else {})})


def _set_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def run_features(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    import logging

    from mmfusion.train.device import describe_device, precision_for, select_device
    from mmfusion.train.features import build_feature_cache
    from mmfusion.train.loop import TrainConfig

    model_cfg = _model_config(args.model_settings)
    train_cfg = TrainConfig.from_config(section_json(args.train_settings, "--train-settings"))
    device = select_device(train_cfg.device)
    precision = precision_for(train_cfg.amp, device)
    logging.getLogger(__name__).info("train features: %s; amp %s", describe_device(device),
                                     precision.mode)
    out = build_feature_cache(args.cache, model_cfg, train_cfg.seed, args.out,
                              batch_size=train_cfg.batch_size, device=device,
                              progress=train_cfg.progress, precision=precision)
    print(f"train features: {out}")
    return 0


def run_fold(args: argparse.Namespace) -> int:
    from mmfusion.train.determinism import apply_determinism
    from mmfusion.train.seed_ensemble import training_seed

    train_section = section_json(args.train_settings, "--train-settings")
    # before anything can start CUDA (CUBLAS_WORKSPACE_CONFIG is read at context creation)
    if train_section.get("deterministic"):
        apply_determinism(True)
    _set_threads(args.threads)
    from mmfusion.errors import ConfigError
    from mmfusion.model.baselines import BASELINES
    from mmfusion.settings import section_defaults

    preprocess = section_json(args.preprocess_settings, "--preprocess-settings")
    # the feature cache's random backbone (model.freeze_backbone) is the one of train.seed
    base = int(train_section.get("seed", section_defaults("train")["seed"]))
    if args.seed_index:  # seed 0 = train.seed: a run without seeds, unchanged
        train_section = {**train_section, "seed": training_seed(base, args.seed_index)}
    if args.variant in BASELINES:
        from mmfusion.train.fold import run_baseline_fold

        m = run_baseline_fold(args.variant, args.table, args.spec, args.folds, args.fold,
                              preprocess, args.out, seed=int(train_section.get("seed", 0)),
                              recalibration=train_section.get("recalibration"))
    else:
        from mmfusion.train.device import precision_for, select_device
        from mmfusion.train.fold import load_fold
        from mmfusion.train.loop import TrainConfig, fit_fold

        model_cfg = _model_config(args.model_settings, args.variant)
        train_cfg = TrainConfig.from_config(train_section)
        # device, GPU and amp problems end the job here, before any data is read
        precision_for(train_cfg.amp, select_device(train_cfg.device, model_cfg.graph_backend))
        if model_cfg.freeze_backbone or args.features:
            _check_features(args.features, args.cache, model_cfg, base)
        elif not args.cache:
            raise ConfigError("deep variants need --cache", fix="run `mmfusion train cache`")
        splits = load_fold(args.table, args.spec, args.folds, args.cache, args.fold, preprocess,
                           features=args.features)
        m = fit_fold(model_cfg, train_cfg, splits, args.out, args.fold,
                     resume=not args.no_resume, features=args.features, feature_seed=base)
    t = m["test"]
    print(f"train {args.variant} fold {args.fold}: test auc {t['auc']:.3f} "
          f"accuracy {t['accuracy']:.3f} f1 {t['f1']:.3f}")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    from mmfusion.train.seed_ensemble import ensemble_seeds

    m = ensemble_seeds(args.members, args.out, args.variant, args.fold)
    print(f"train ensemble {args.variant} fold {args.fold}: {m['n_seeds']} seeds, test auc "
          f"{m['test']['auc']:.3f}")
    return 0


def _check_features(features: str | None, cache: str | None, model_cfg: ModelConfig,
                    seed: int) -> None:
    """Fail before loading anything when the feature cache is missing, built with other
    backbone settings, or from another (older) patch cache than `--cache`."""
    from mmfusion.errors import ConfigError
    from mmfusion.train.features import BUILD_HINT, check_feature_cache, patch_cache_fingerprint

    stored = check_feature_cache(features, model_cfg, seed)
    if cache and stored.get("patch_cache") != patch_cache_fingerprint(cache):
        raise ConfigError("the feature cache was built from another (or an older) patch "
                          f"cache than {cache}", path=features, fix=BUILD_HINT)
