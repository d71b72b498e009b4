"""`mmfusion train cache|fold`: the patch cache, and one variant trained on one fold."""

from __future__ import annotations

import argparse

from mmfusion.settings import parse_settings_json as section_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="patch cache; train/evaluate a variant on a fold",
                              description="Train stage: `cache` stacks every patient's "
                              "patches.npz into memory-mapped arrays; `fold` trains one "
                              "variant (base1, base2, base3, mmfusion, logreg, gbm) on one "
                              "fold and scores its test split once.")
    sub = p.add_subparsers(dest="train_command", metavar="ACTION", required=True)

    c = sub.add_parser("cache", help="memory-mapped patch cache from patches.npz files")
    c.add_argument("--table", required=True, help="cohort table.tsv (its patients are cached)")
    c.add_argument("--patients-dir", required=True, help="{results}/patients")
    c.add_argument("--out", required=True, help="cache folder")
    c.set_defaults(func=run_cache)

    f = sub.add_parser("fold", help="train one variant on one fold")
    f.add_argument("--table", required=True, help="cohort table.tsv")
    f.add_argument("--spec", required=True, help="cohort feature_spec.json")
    f.add_argument("--folds", required=True, help="cohort folds.tsv")
    f.add_argument("--cache", help="patch cache folder (deep variants)")
    f.add_argument("--fold", type=int, required=True)
    f.add_argument("--variant", required=True)
    f.add_argument("--model-settings", default="{}", help="the `model` section as JSON")
    f.add_argument("--train-settings", default="{}", help="the `train` section as JSON")
    f.add_argument("--preprocess-settings", default="{}",
                   help="the `preprocess` section as JSON")
    f.add_argument("--out", required=True, help="output folder models/{variant}/fold{k}")
    f.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    f.set_defaults(func=run_fold)




def run_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from mmfusion.train.dataset import build_patch_cache

    ids = pd.read_csv(args.table, sep="\t", dtype={"patient_id": str})["patient_id"].tolist()
    paths = [Path(args.patients_dir) / pid / "patches.npz" for pid in ids]
    build_patch_cache(ids, paths, args.out)
    print(f"train cache: {len(ids)} patients -> {args.out}")
    return 0


def run_fold(args: argparse.Namespace) -> int:
    from mmfusion.errors import ConfigError
    from mmfusion.model.baselines import BASELINES

    preprocess = section_json(args.preprocess_settings, "--preprocess-settings")
    train_section = section_json(args.train_settings, "--train-settings")
    if args.variant in BASELINES:
        from mmfusion.train.fold import run_baseline_fold

        m = run_baseline_fold(args.variant, args.table, args.spec, args.folds, args.fold,
                              preprocess, args.out, seed=int(train_section.get("seed", 0)))
    else:
        from mmfusion.model.mmfusion import ModelConfig
        from mmfusion.train.fold import load_fold
        from mmfusion.train.loop import TrainConfig, fit_fold

        if not args.cache:
            raise ConfigError("deep variants need --cache", fix="run `mmfusion train cache`")
        model_cfg = ModelConfig.from_dict({**section_json(args.model_settings, "--model-settings"),
                                           "variant": args.variant})
        train_cfg = TrainConfig.from_dict(train_section)
        splits = load_fold(args.table, args.spec, args.folds, args.cache, args.fold, preprocess)
        m = fit_fold(model_cfg, train_cfg, splits, args.out, args.fold,
                     resume=not args.no_resume)
    t = m["test"]
    print(f"train {args.variant} fold {args.fold}: test auc {t['auc']:.3f} "
          f"accuracy {t['accuracy']:.3f} f1 {t['f1']:.3f}")
    return 0
