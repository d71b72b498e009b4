"""`mmfusion trajectory`: paper Fig. 3, the diffusion's reverse trajectory of every fold's test
patients: computed by the one scoring function (mmfusion/train/trajectory.py), then
analysed and plotted (t-SNE per step, Davies-Bouldin per step; mmfusion/report/trajectory.py)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trajectory", help="paper Fig. 3: t-SNE of the diffusion's reverse "
                                  "trajectory per fold, Davies-Bouldin per step",
        description="For each fold model of each diffusion variant (models/{variant}/"
                    "fold{k}: model.pt, scoring.json, preprocessor.json) runs the CFD "
                    "reverse process of the fold's test patients (seeded, exactly as the "
                    "fold scored them; fig3/trajectories/{variant}_fold{k}.npz) and writes "
                    "fig3_davies_bouldin.csv (one row per variant x fold x step), "
                    "fig3/{variant}_fold{k}.png (t-SNE of the noise network's hidden features per "
                    "step), fig3/{variant}_fold{k}_y_t.png (y_t in its own coordinates), "
                    "fig3/{variant}_davies_bouldin.png, fig3/representations.csv and "
                    "fig3/info.json.")
    p.add_argument("--models-dir", required=True, help="results/models")
    p.add_argument("--variants", nargs="+", required=True,
                   help="diffusion variants: mmfusion and/or Table 3 ablations (mmfusion_*)")
    p.add_argument("--table", required=True, help="results/cohort/table.tsv")
    p.add_argument("--spec", required=True, help="results/cohort/feature_spec.json")
    p.add_argument("--folds", required=True, help="results/cohort/folds.tsv")
    p.add_argument("--fold-numbers", nargs="+", type=int, default=None,
                   help="folds to draw (default: repeat 0's folds, every patient once)")
    p.add_argument("--member", default=None,
                   help="subfolder of each fold's folder holding the model (seed0 with "
                   "train.seeds > 1)")
    p.add_argument("--cache", required=True, help="patch cache folder (`train cache`)")
    p.add_argument("--out", required=True, help="output folder (results/report)")
    p.add_argument("--steps", type=int, default=6,
                   help="steps t shown, evenly spaced from T to 0, both included; T + 1 or "
                   "more: every step (default 6)")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | auto (default: train.device's default; the workflow "
                   "passes cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default: all cores)")
    p.set_defaults(func=run_trajectory)


def run_trajectory(args: argparse.Namespace) -> int:
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from mmfusion.report.trajectory import TABLE, build_fig3
    from mmfusion.train.trajectory import compute_trajectories, first_repeat_folds

    folds = args.fold_numbers or first_repeat_folds(args.folds)
    compute_trajectories(args.models_dir, args.variants, args.table, args.spec, args.folds,
                         args.cache, args.out, device=args.device, folds=folds,
                         member=args.member)
    db = build_fig3(args.variants, folds, args.out, n_steps=args.steps)
    print(f"trajectory: {len(db)} rows ({db['variant'].nunique()} variant(s), "
          f"{db['fold'].nunique()} fold(s), {db['step'].nunique()} steps) -> "
          f"{args.out}/{TABLE}")
    return 0
