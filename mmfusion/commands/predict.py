"""`mmfusion predict`: score new patients (DICOM + tables) with a model bundle."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="score new patients with a trained model bundle",
        description="Runs index -> checks -> convert -> crop -> radiomics for the patients "
                    "of --dicom with the BUNDLE's settings (never the current config), then "
                    "every fold model of the bundle (mean probability; uncertainty = spread "
                    "over folds and diffusion samples; decision at the mean of the folds' "
                    "thresholds). Writes OUT/predictions.csv (patient_id, probability, "
                    "uncertainty, decision, qc_warnings[, label]) and OUT/exclusions.tsv "
                    "(one row per patient that could not be scored, with the reason). The "
                    "bundle's checksums are verified before anything is loaded.")
    p.add_argument("--bundle", required=True, help="bundle folder (results/bundle/VARIANT)")
    p.add_argument("--dicom", help="the new patients' DICOM folder, any layout")
    p.add_argument("--manifest", help="a manifest (CSV/TSV: patient_id, image, tumour[, nodes,"
                   " tumour_label]) of new patients given as NIfTI/NRRD/MetaImage images and"
                   " masks (README \"Your images are not DICOM-RT\"); with or without --dicom")
    p.add_argument("--clinical", required=True,
                   help="their clinical table (the bundle's columns; the label is optional)")
    p.add_argument("--hematology", help="their hematology table (when the bundle uses one)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="patients prepared in parallel, and torch threads (default: "
                        "min(4, CPUs))")
    p.add_argument("--work", help="folder for the prepared images (default OUT/work); "
                                  "bundles of one training run can share it")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="device of the deep models (default: train.device of the schema)")
    p.add_argument("--graph-backend", choices=("auto", "dgl", "torch"), default=None,
                   help="what runs HGA's graph layer (default: the training run's "
                        "model.graph_backend; torch needs no DGL and gives the same scores)")
    p.add_argument("--prepare-only", action="store_true",
                   help="only prepare the images into --work (shared by several bundles)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.predict.run import predict

    if not args.dicom and not args.manifest:
        raise SystemExit("mmfusion predict: give the new patients' images: --dicom FOLDER"
                         " and/or --manifest FILE")
    summary = predict(args.bundle, args.dicom, args.clinical, args.out, manifest=args.manifest,
                      hematology=args.hematology, work=args.work,
                      workers=max(1, args.workers), progress=not args.no_progress,
                      device=args.device, prepare_only=args.prepare_only,
                      graph_backend=args.graph_backend)
    if args.prepare_only:
        print(f"predict: images prepared ({summary.n_excluded} patient(s) excluded)")
    else:
        print(f"predict {summary.variant}: {summary.n_scored} patient(s) scored, "
              f"{summary.n_excluded} excluded -> {summary.out / 'predictions.csv'}")
    return 0
