"""New patients' images, as the workflow's stages would treat them, with the bundle's settings.

index (`mmfusion.dicom.index`) -> preflight checks of the ROI regexes and IDs
(`mmfusion.cohort.preflight`) -> per patient: convert (`mmfusion.dicom.convert`), crop
(`mmfusion.features.crop`), radiomics (`mmfusion.features.radiomics`), in a work folder
laid out like `results/` (`dicom_index.tsv`, `patients/{id}/`). A patient that cannot be
used is an `Outcome` with status `excluded`, its stage and the reason; the others go on.

Caches under the work folder are keyed on what they were built from, so a rerun never
serves a stale result:
- the index (`dicom_index.tsv`) on the bundle's stage settings, the DICOM root and a
  listing of every file under it (relative path, size, modification time): a file added,
  removed or changed re-indexes;
- a patient's folder (`patients/{id}/prepared.json`) on the stage settings and the sha256
  of the content of each of the patient's DICOM files (every file the index lists for the
  patient): a patient whose files changed, or who is new, is prepared again; an unchanged
  one is reused, e.g. by another variant of the same training run.
The tables are read anew on every run (nothing is cached from them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmfusion.dicom.index import is_mask_row
from mmfusion.errors import MMFusionError
from mmfusion.ids import NO_PATIENT_ID
from mmfusion.io import write_text_atomic
from mmfusion.predict.bundle import Bundle
from mmfusion.predict.manifest import sha256_file
from mmfusion.predict.tables import NewTables

log = logging.getLogger(__name__)

STAGES = ("rois", "convert", "crop", "radiomics")
RECORD = "prepared.json"
OK, EXCLUDED = "ok", "excluded"


@dataclass
class Outcome:
    """One patient's preparation: `ok`, or `excluded` at `stage` for `reason`."""

    patient: str
    status: str
    stage: str = ""
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


def preparation_key(bundle: Bundle) -> str:
    """sha256 of the stages' settings and the radiomics params file's content."""
    sections = {name: bundle.section(name) for name in STAGES}
    sections["radiomics"]["params"] = sha256_file(sections["radiomics"]["params"])
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class PrepareTask:
    """One patient's preparation (a process-pool task): its index, folder, the stages'
    settings, their key (`preparation_key`) and the patient's DICOM files (absolute)."""

    patient: str
    index_tsv: str
    folder: str
    sections: dict[str, Any]
    settings_key: str
    files: tuple[str, ...] = ()
    manifest_index: str = ""  # the manifest route: convert from this index's row

    def key(self) -> str:
        """sha256 of the settings key and of each file's name (relative to the folder the
        patient's files share) and content."""
        digest = hashlib.sha256(self.settings_key.encode())
        base = os.path.dirname(os.path.commonpath(self.files)) if self.files else ""
        names = [os.path.relpath(f, base) for f in self.files]
        for name, path in sorted(zip(names, self.files, strict=True)):
            digest.update(f"\n{name}\t{sha256_file(path)}".encode())
        return digest.hexdigest()


def listing_key(root: str | Path, settings_key: str) -> str:
    """sha256 of the settings key and every file under `root` (as the index crawls it):
    relative path, size and modification time."""
    from mmfusion.dicom.headers import iter_files

    digest = hashlib.sha256(settings_key.encode())
    for path in iter_files(root):
        st = os.stat(path)
        digest.update(f"\n{os.path.relpath(path, root)}\t{st.st_size}\t{st.st_mtime_ns}"
                      .encode())
    return digest.hexdigest()


def patient_files(rows: Iterable[dict], patient: str) -> tuple[str, ...]:
    """Every file the index lists for `patient` (absolute paths, sorted)."""
    return tuple(sorted({os.path.join(r["dicom_root"], f) for r in rows
                         if r.get("patient") == patient for f in r.get("files") or []}))


def _record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare_patient(task: PrepareTask) -> Outcome:
    """Convert, crop and extract radiomics of one patient into its folder, unless the folder
    already holds them for the same settings and file contents (`PrepareTask.key`)."""
    from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_index
    from mmfusion.features.crop import run_crop
    from mmfusion.features.patches import CropSettings
    from mmfusion.features.radiomics import PROVENANCE_NAME, RadiomicsSettings, run_radiomics

    patient, index_tsv, sections = task.patient, task.index_tsv, task.sections
    logging.getLogger("radiomics").setLevel(logging.ERROR)  # its INFO lines per feature class
    folder = Path(task.folder)
    key = task.key()
    cached = _record(folder)
    if cached is not None and cached.get("key") == key:
        return Outcome(**cached["outcome"])
    if cached is not None:
        log.info("patient %s: inputs or settings changed since it was prepared; preparing "
                 "it again", patient)
    stage, warnings = "convert", []
    try:
        settings = ConvertSettings.from_config(sections["rois"], sections["convert"])
        if task.manifest_index:
            from mmfusion.images.convert import convert_manifest_row
            from mmfusion.images.manifest import read_manifest_index

            row = next(r for r in read_manifest_index(task.manifest_index)
                       if r["patient"] == patient)
            summary = convert_manifest_row(row, folder, settings)
        else:
            summary = convert_patient(inputs_from_index(index_tsv, patient, settings),
                                      folder, settings)
        warnings += [f"convert: {w}" for w in summary["warnings"]]
        write_text_atomic(folder / "convert_status.json", json.dumps(
            {"patient_id": summary["patient_id"], "status": OK, "reason": "",
             "warnings": summary["warnings"]}, indent=2) + "\n")
        stage = "crop"
        patches = run_crop(folder, CropSettings.from_config(sections["crop"]))
        warnings += [f"crop: {w}" for w in patches.meta.get("warnings", [])]
        stage = "radiomics"
        run_radiomics(folder, RadiomicsSettings.from_config(sections["radiomics"]))
        prov = json.loads((folder / PROVENANCE_NAME).read_text())
        warnings += [f"radiomics: {w}" for w in prov.get("warnings", [])]
        outcome = Outcome(patient, OK, warnings=warnings)
    except MMFusionError as err:
        outcome = Outcome(patient, EXCLUDED, stage, " ".join(str(err).split()), warnings)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / RECORD, json.dumps({"key": key, "outcome": asdict(outcome)},
                                                  indent=1) + "\n")
    return outcome


def _index(dicom_root: str | Path, work: Path, key: str, workers: int,
           progress: bool) -> list[dict]:
    """The DICOM index of `dicom_root` in `work/dicom_index.tsv`, reused when the work
    folder's record holds the same `listing_key` (root, settings, every file's stat)."""
    from mmfusion.dicom.index import index_dicom, read_index, write_index

    root = str(Path(dicom_root).resolve())
    listing = listing_key(root, key)
    record = _record(work)
    index_tsv = work / "dicom_index.tsv"
    if record and record.get("dicom_root") == root and record.get("listing") == listing \
            and index_tsv.is_file():
        log.info("reusing the index of %s in %s (no file added, removed or changed)", root,
                 work)
        return read_index(index_tsv)
    rows = index_dicom(root, workers=workers, progress=progress)
    write_index(rows, index_tsv)
    write_text_atomic(work / RECORD, json.dumps(
        {"key": key, "dicom_root": root, "listing": listing}, indent=1) + "\n")
    return read_index(index_tsv)


def _manifest(manifest: str | Path, work: Path) -> list[dict]:
    """The manifest indexed into `work/manifest_index.tsv` (headers only: always redone)."""
    from mmfusion.images.manifest import (
        index_manifest,
        read_manifest_index,
        write_manifest_index,
    )

    write_manifest_index(index_manifest(manifest), work / "manifest_index.tsv")
    return read_manifest_index(work / "manifest_index.tsv")


def manifest_files(row: dict) -> tuple[str, ...]:
    """Every file of a manifest patient (a DICOM folder's files one by one), sorted."""
    from mmfusion.dicom.headers import iter_files

    files: set[str] = set()
    for path in (row["image"], row["tumour"], *row["nodes"]):
        if os.path.isdir(path):
            files.update(iter_files(path))
        elif os.path.isfile(path):
            files.add(path)
    return tuple(sorted(files))


def _preflight(bundle: Bundle, index_tsv: Path, rows: list[dict], tables: NewTables,
               clinical: str | Path, hematology: str | Path | None,
               manifest: list[dict] | None = None) -> None:
    """The workflow's preflight checks that apply here: ROI regexes against the ROI names
    present, IDs colliding on one folder name, a patient in both the DICOM folder and the
    manifest. Errors stop the run (one line)."""
    from mmfusion.cohort.preflight import (
        ERROR,
        PreflightInputs,
        check_ids,
        check_manifest,
        check_rois,
    )

    originals: dict[str, set[str]] = {}
    rois: dict[str, list[str]] = {}
    for row in rows:
        if row.get("patient"):
            originals.setdefault(row["patient"], set()).add(row.get("patient_id") or "")
            if is_mask_row(row) and row.get("linked_series_uid"):
                rois.setdefault(row["patient"], []).extend(row.get("roi_names") or [])
    manifest = manifest or []
    dicom_patients = set(linked_patients(rows)[0])
    for row in manifest:
        originals.setdefault(row["patient"], set()).add(row["patient_id"])
        if row["segment_names"]:
            rois[row["patient"]] = row["segment_names"]
    names = bundle.section("rois")
    inputs = PreflightInputs(index_tsv=index_tsv, clinical=clinical, hematology=hematology,
                             tables=tables.settings, tumour_regex=names["tumour"],
                             node_regex=names["node"], n_folds=len(bundle.folds))
    findings = check_rois(inputs, rois) + check_ids(originals, tables.raw["clinical"],
                                                     tables.raw.get("hematology"))
    findings += [f for f in check_manifest(manifest, dicom_patients) if f.severity == ERROR]
    for finding in findings:
        log.warning("preflight %s %s %s: %s", finding.severity, finding.kind,
                    finding.patient_id, finding.detail)
    errors = [f for f in findings if f.severity == ERROR]
    if errors:
        raise MMFusionError(f"preflight: {errors[0].detail}", path=str(index_tsv),
                            fix="the bundle's ROI regexes and the IDs must fit the new "
                                "cohort")


def linked_patients(rows: Iterable[dict]) -> tuple[list[str], list[str]]:
    """(patients with a CT series linked to an RTSTRUCT or DICOM-SEG, other patients of the
    index)."""
    rows = list(rows)
    linked = {r["patient"] for r in rows if is_mask_row(r)
              and r["linked_series_uid"] and r["patient"] and r["patient"] != NO_PATIENT_ID}
    others = {r["patient"] for r in rows if r.get("patient")} - linked
    return sorted(linked), sorted(others)


def prepare_images(bundle: Bundle, dicom_root: str | Path | None, work: str | Path,
                   tables: NewTables, clinical: str | Path, hematology: str | Path | None,
                   workers: int = 1, progress: bool = True,
                   manifest: str | Path | None = None) -> dict[str, Outcome]:
    """Index, check and prepare every new patient that has table rows (from the DICOM
    folder and/or the manifest); returns an `Outcome` per patient found in the index, the
    manifest or the tables (sorted by ID)."""
    from mmfusion.dicom.index_io import write_index

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    key = preparation_key(bundle)
    index_tsv = work / "dicom_index.tsv"
    if dicom_root:
        rows = _index(dicom_root, work, key, workers, progress)
    else:
        rows = []
        write_index(rows, index_tsv)
    manifest_rows = _manifest(manifest, work) if manifest else []
    _preflight(bundle, index_tsv, rows, tables, clinical, hematology, manifest_rows)
    linked, others = linked_patients(rows)
    from_manifest = {r["patient"]: r for r in manifest_rows}
    linked = sorted({*linked, *from_manifest})
    others = [p for p in others if p not in from_manifest]
    outcomes: dict[str, Outcome] = {}
    for pid in others:
        reason = ("DICOM objects without a PatientID" if pid == NO_PATIENT_ID
                  else "no CT series linked to an RTSTRUCT or DICOM-SEG")
        outcomes[pid] = Outcome(pid, EXCLUDED, "index", reason)
    hema = tables.hematology
    todo = []
    for pid in linked:
        if pid not in tables.clinical.index:
            outcomes[pid] = Outcome(pid, EXCLUDED, "tables", "not in the clinical table")
        elif hema is not None and pid not in hema.index:
            outcomes[pid] = Outcome(pid, EXCLUDED, "tables", "not in the hematology table")
        else:
            todo.append(pid)
    for pid in tables.clinical.index:
        if pid not in outcomes and pid not in todo:
            outcomes[pid] = Outcome(pid, EXCLUDED, "index", "in the clinical table but no "
                                    "images in the DICOM folder or the manifest")
    sections = {name: bundle.section(name) for name in STAGES}
    manifest_index = str(work / "manifest_index.tsv")
    tasks = [PrepareTask(pid, str(index_tsv), str(work / "patients" / pid), sections, key,
                         manifest_files(from_manifest[pid]), manifest_index)
             if pid in from_manifest else
             PrepareTask(pid, str(index_tsv), str(work / "patients" / pid), sections, key,
                         patient_files(rows, pid)) for pid in todo]
    log.info("%d patient(s) to prepare (%d excluded before conversion)", len(tasks),
             len(outcomes))
    bar = tqdm(total=len(tasks), desc="prepare patients", unit="patient",
               disable=not progress)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for outcome in pool.map(prepare_patient, tasks):
                outcomes[outcome.patient] = outcome
                bar.update()
    else:
        for task in tasks:
            outcome = prepare_patient(task)
            outcomes[outcome.patient] = outcome
            bar.update()
    bar.close()
    for outcome in outcomes.values():
        if outcome.status == EXCLUDED:
            log.warning("patient %s excluded at %s: %s", outcome.patient, outcome.stage,
                        outcome.reason)
    return dict(sorted(outcomes.items()))
