"""`predict()`: new patients' DICOM and tables -> `predictions.csv` and `exclusions.tsv`.

The bundle's checksums are verified first, its tables' requirements checked next (a
missing column or an unknown category stops here, before any image is read), then the
images are prepared (`mmfusion.predict.prepare`), the cohort table is assembled and
written as the workflow writes it (`features.tsv`, read back with `read_cohort_table`, so
values are rounded exactly as in training), and every fold's model scores it
(`mmfusion.predict.ensemble`). Every output is written atomically.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmfusion.cohort.merge import EXCLUSION_COLUMNS, read_cohort_table, read_radiomics_rows
from mmfusion.cohort.preprocess import FoldPreprocessor
from mmfusion.cohort.tables import cell_text
from mmfusion.errors import ConfigError
from mmfusion.io import atomic_path, write_text_atomic
from mmfusion.predict.bundle import Bundle, load_bundle, version_differences
from mmfusion.predict.manifest import MANIFEST, sha256_file
from mmfusion.predict.prepare import OK, Outcome, prepare_images
from mmfusion.predict.tables import NewTables, read_new_tables

log = logging.getLogger(__name__)

COLUMNS = ["patient_id", "probability", "uncertainty", "decision", "qc_warnings"]


@dataclass
class PredictSummary:
    variant: str
    n_scored: int
    n_excluded: int
    out: Path


def _frame(bundle: Bundle, tables: NewTables, patients: list[str], work: Path,
           out: Path) -> pd.DataFrame:
    """The cohort table of `patients` (tables + radiomics rows), written to
    `out/features.tsv` as `mmfusion cohort build` writes `table.tsv` and read back."""
    settings = tables.settings
    clin = tables.clinical.loc[patients]
    parts = [clin[["label"]] if tables.has_label
             else pd.DataFrame({"label": np.nan}, index=clin.index),
             clin[list(settings.clinical.columns)]]
    if tables.hematology is not None:
        parts.append(tables.hematology.loc[patients, list(settings.hematology.columns)])
    rad = read_radiomics_rows(work / "patients" / p / "radiomics.tsv" for p in patients)
    rad.index = pd.Index([str(i) for i in rad.index], name="patient_id")
    parts.append(rad.loc[patients] if patients else rad)
    table = pd.concat(parts, axis=1).rename_axis("patient_id").reset_index()
    path = out / "features.tsv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.10g")
    frame = read_cohort_table(path, bundle.spec)
    for fold in bundle.folds:
        need = FoldPreprocessor.from_dict(fold.preprocessor).required_columns()
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ConfigError(f"fold {fold.fold} needs column(s) {missing[:5]} that the new "
                              "patients' features lack", path=str(path),
                              fix="the radiomics settings differ from training's")
    return frame


def _qc_warnings(bundle: Bundle, tables: NewTables, frame: pd.DataFrame,
                 outcomes: dict[str, Outcome]) -> list[str]:
    """Per patient: the stages' warnings, imputed table values, and categories that a
    fold's training rows never held (their one-hot column was never trained)."""
    columns = tables.columns()
    seen = []  # per fold: column -> the levels its training rows held
    for fold in bundle.folds:
        groups = FoldPreprocessor.from_dict(fold.preprocessor).levels_seen_.values()
        seen.append({c: {cell_text(v) for v in lv} for g in groups for c, lv in g.items()})
    categorical = {**tables.settings.clinical.categorical,
                   **tables.settings.hematology.categorical}
    out = []
    for i, pid in enumerate(frame["patient_id"].astype(str)):
        notes = list(outcomes[pid].warnings)
        empty = [c for c in columns if pd.isna(frame.at[i, c])]
        if empty:
            notes.append(f"imputed (empty in the table): {', '.join(empty)}")
        for col in categorical:
            value = frame.at[i, col]
            if pd.isna(value):
                continue
            folds = [str(k) for k, levels in enumerate(seen)
                     if col in levels and cell_text(value) not in levels[col]]
            if folds:
                notes.append(f"{col}={value} was not in the training rows of fold(s) "
                             f"{', '.join(folds)}")
        out.append("; ".join(" ".join(str(n).split()) for n in notes))
    return out


def _write_outputs(out: Path, frame: pd.DataFrame, scores, warnings: list[str],
                   has_label: bool, outcomes: dict[str, Outcome]) -> None:
    columns = COLUMNS + (["label"] if has_label else [])
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for i, pid in enumerate(scores.patients):
            row = [pid, f"{scores.probability[i]:.6f}", f"{scores.uncertainty[i]:.6f}",
                   int(scores.decision[i]), warnings[i]]
            if has_label:
                y = frame.at[i, "label"]
                row.append("" if pd.isna(y) else int(y))
            writer.writerow(row)
    with atomic_path(out / "fold_probabilities.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        # probability: the fold's recalibrated probability (= its own test predictions);
        # sd_over_samples: of the recalibrated samples; probability_raw: before the map
        writer.writerow(["patient_id", "fold", "probability", "sd_over_samples",
                         "probability_raw"])
        for k, samples in enumerate(scores.per_fold):
            for pid, p, s, raw in zip(scores.patients, scores.fold_probability[k], samples,
                                      scores.fold_probability_raw[k], strict=True):
                writer.writerow([pid, k, f"{p:.8f}", f"{s.std():.8f}", f"{raw:.8f}"])
    excluded = [o for o in outcomes.values() if o.status != OK]
    with atomic_path(out / "exclusions.tsv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(EXCLUSION_COLUMNS)
        for o in excluded:
            writer.writerow([o.patient, o.stage, " ".join(o.reason.split())])


def predict(bundle_dir: str | Path, dicom_root: str | Path | None, clinical: str | Path,
            out: str | Path, hematology: str | Path | None = None, *,
            work: str | Path | None = None, workers: int = 1, progress: bool = True,
            device: str | None = None, prepare_only: bool = False,
            graph_backend: str | None = None,
            manifest: str | Path | None = None) -> PredictSummary:
    """Score the new patients of `dicom_root` and/or `manifest` (NIfTI/NRRD/... images and
    masks, README "Your images are not DICOM-RT") + tables with the bundle; see module doc.

    Writes `out/predictions.csv`, `exclusions.tsv`, `fold_probabilities.csv`,
    `features.tsv`, `predict_info.json`; the prepared images go to `work` (default
    `out/work`). `prepare_only`: stop after preparing the images (shared by several
    bundles of one training run). `graph_backend`: auto | dgl | torch in place of the
    training run's `model.graph_backend` (the same scores to float precision).

    Raises:
        ConfigError: a bundle that fails its checksums or does not fit the new data.
        TableError: a table that lacks a column the bundle needs or holds a category it
            does not know.
    """
    bundle = load_bundle(bundle_dir)  # checksums first, before anything is loaded
    for diff in version_differences(bundle):
        log.warning("software differs from the bundle's training environment: %s", diff)
    tables = read_new_tables(clinical, hematology or None, bundle)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work else out / "work"
    outcomes = prepare_images(bundle, dicom_root, work, tables, clinical, hematology or None,
                              workers=workers, progress=progress, manifest=manifest)
    ok = [pid for pid, o in outcomes.items() if o.status == OK]
    if prepare_only:
        log.info("prepared %d patient(s) in %s", len(ok), work)
        return PredictSummary(bundle.variant, 0, len(outcomes) - len(ok), out)
    from mmfusion.predict.ensemble import Scores, score  # torch: after the worker processes

    if ok:
        frame = _frame(bundle, tables, ok, work, out)
        if workers > 0:
            import torch

            torch.set_num_threads(workers)
        scores = score(bundle, frame, [work / "patients" / p for p in ok], device,
                       graph_backend)
        warnings = _qc_warnings(bundle, tables, frame, outcomes)
    else:  # nobody to score: the exclusions still say why
        log.warning("no patient could be scored; the reasons are in %s",
                    out / "exclusions.tsv")
        frame, warnings = pd.DataFrame({"patient_id": [], "label": []}), []
        empty = np.zeros(0)
        scores = Scores([], [], empty, empty, empty.astype(int), bundle.decision_threshold)
    _write_outputs(out, frame, scores, warnings, tables.has_label, outcomes)
    info = {"bundle": str(Path(bundle_dir).resolve()), "variant": bundle.variant,
            "bundle_manifest_sha256": sha256_file(Path(bundle_dir) / MANIFEST),
            "decision_threshold": scores.threshold, "n_scored": len(ok),
            "n_excluded": len(outcomes) - len(ok), "has_label": tables.has_label,
            "software_differences": version_differences(bundle),
            "ensemble": bundle.info["ensemble"]}
    write_text_atomic(out / "predict_info.json", json.dumps(info, indent=1) + "\n")
    log.info("%s: %d patient(s) scored, %d excluded -> %s", bundle.variant, len(ok),
             len(outcomes) - len(ok), out / "predictions.csv")
    return PredictSummary(bundle.variant, len(ok), len(outcomes) - len(ok), out)
