"""Which files convert reads for one patient: the RTSTRUCT or DICOM-SEG and its CT series,
chosen from index rows (`select_inputs`, `inputs_from_index`) or by crawling one folder
(`inputs_from_folder`). Importable from `mmfusion.dicom.convert` too.

Choice among a patient's linked, undamaged mask objects: those with a name (ROI name, or
SEG SegmentLabel) matching `rois.tumour` first; among them an RTSTRUCT before a DICOM-SEG
(with a warning naming the SEG left out); the newest (StructureSetDate/ContentDate) of
that kind. So a SEG is used when the patient has no RTSTRUCT, or none whose ROIs match.

The index records files relative to the DICOM root; the root is given (`dicom_root`, the
workflow passes `cohort.dicom_root`) or taken from the rows (the index records it
relative to its own folder). Messages name files relative to the root, RTSTRUCTs by
SOPInstanceUID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mmfusion.dicom.index import index_dicom, is_mask_row
from mmfusion.dicom.index_io import read_index
from mmfusion.dicom.problems import Problem, problem_messages
from mmfusion.dicom.rois import compile_roi_regex, match_rois
from mmfusion.errors import ConfigError, DicomError
from mmfusion.ids import NO_PATIENT_ID


class RoiPatterns(Protocol):
    """What selection needs of `mmfusion.dicom.convert.ConvertSettings` (no import: the
    convert module imports this one)."""

    @property
    def tumour(self) -> str:  # the GTV-T ROI name regex
        ...


@dataclass
class PatientInputs:
    patient_id: str
    ct_files: list[str]  # absolute paths (to read)
    rtstruct: str  # "" when the masks come from a DICOM-SEG
    warnings: list[str]
    root: str = ""  # the DICOM root: paths in outputs are made relative to it
    seg: str = ""  # a DICOM-SEG file (absolute) instead of the RTSTRUCT


def select_inputs(rows: list[dict], patient: str, settings: RoiPatterns,
                  dicom_root: str | Path | None = None) -> PatientInputs:
    """Pick the RTSTRUCT or DICOM-SEG and its CT series for one patient from index rows.

    `patient` is the sanitised ID (the `patient` column) or the raw PatientID.
    `dicom_root`: the folder the index's `files` are relative to (default: the rows'
    `dicom_root`, i.e. the one recorded by the index).
    Decisions key on the rows' `problem_codes` only; the messages are just shown.
    Raises DicomError for every refusal (no linked RTSTRUCT/SEG, shared PatientID, ...),
    ConfigError when the DICOM root is unknown or does not hold the index's files.
    """
    mine = [r for r in rows if patient in (r["patient"], r["patient_id"]) and r["patient"]
            and r["patient"] != NO_PATIENT_ID and r["patient_id"]]
    if not mine:
        raise DicomError("no DICOM object of this patient in the index", patient=patient,
                         fix="check the PatientID or re-run `mmfusion index`")
    patient_id = mine[0]["patient_id"]
    for row in mine:
        for code in (Problem.SHARED_PATIENT_ID, Problem.PATIENT_ID_COLLISION):
            refused = problem_messages(row, code)
            if refused:
                raise DicomError(refused[0], patient=patient_id, path=_first_file(row),
                                 fix="give each patient a unique PatientID")
    objects = [r for r in mine if is_mask_row(r)]
    noun = _noun(objects)
    if not objects:
        raise DicomError("no RTSTRUCT or DICOM-SEG for this patient", patient=patient_id)
    linked = [r for r in objects if r["linked_series_uid"]]
    if not linked:
        problems = "; ".join(p for r in objects for p in r["problems"])
        raise DicomError(f"no {noun} is linked to a CT series ({problems})",
                         patient=patient_id, path=_first_file(objects[0]),
                         fix="add the referenced CT series to the DICOM root")
    warnings = []
    intact = [r for r in linked if not _DAMAGED & set(r["problem_codes"])]
    if not intact:
        damage = next(m for m, c in zip(linked[0]["problems"], linked[0]["problem_codes"],
                                         strict=True) if c in _DAMAGED)
        raise DicomError(f"damaged {_noun(linked[:1])}: {damage}", patient=patient_id,
                         path=_first_file(linked[0]), fix=f"export the {_noun(linked[:1])}"
                         " again")
    if len(intact) < len(linked):
        skipped = ", ".join(_sop(r) for r in linked if r not in intact)
        warnings.append(f"{len(linked) - len(intact)} damaged {_noun(linked)}(s) skipped"
                        f" (SOPInstanceUID {skipped})")
    tumour = compile_roi_regex(settings.tumour, "tumour")
    with_tumour = [r for r in intact if match_rois(r["roi_names"], tumour)]
    choice = with_tumour or intact
    structs = [r for r in choice if r["modality"] == "RTSTRUCT"]
    segs = [r for r in choice if r["modality"] != "RTSTRUCT"]
    if structs and segs:  # the rule: an RTSTRUCT before a DICOM-SEG (see the module doc)
        warnings.append(f"{len(segs)} DICOM-SEG(s) also fit (SOPInstanceUID"
                        f" {', '.join(_sop(r) for r in segs)}); the RTSTRUCT was used"
                        " (RTSTRUCTs are preferred)")
    choice = structs or segs
    noun = _noun(choice)
    choice.sort(key=lambda r: r["structure_set_date"], reverse=True)
    if len(choice) > 1:
        warnings.append(f"{len(choice)} usable {noun}s; the newest was used"
                        f" (SOPInstanceUID {_sop(choice[0])})")
    consistent = [r for r in choice if Problem.FOR_MISMATCH not in r["problem_codes"]]
    if consistent and len(consistent) < len(choice):
        warnings.append(f"{len(choice) - len(consistent)} {noun}(s) with a Frame of"
                        " Reference mismatch skipped")
        choice = consistent
    struct = choice[0]
    mismatch = problem_messages(struct, Problem.FOR_MISMATCH)
    if mismatch:
        raise DicomError(mismatch[0], patient=patient_id, path=_first_file(struct),
                         fix=f"re-export the {noun} on the CT's Frame of Reference")
    series = [r for r in mine if r["modality"] == "CT"
              and r["series_uid"] == struct["linked_series_uid"]]
    if len(series) != 1:
        raise DicomError(f"linked CT series {struct['linked_series_uid']} not found once in"
                         " the index", patient=patient_id, path=_first_file(struct))
    folders = {Path(f).parent for f in series[0]["files"]}
    lone = [r for r in rows if r is not series[0] and len(r["files"]) == 1
            and Path(r["files"][0]).parent in folders]
    stray = problem_messages(series[0], Problem.STRAY_SLICE)
    if stray:
        beside = [r for r in lone if not r["sop_instance_uid"]  # image series rows
                  and r["modality"] not in ("UNREADABLE", "NON-DICOM")]
        raise DicomError(f"CT series refused: {stray[0]}", patient=patient_id,
                         path=_first_file(beside[0] if len(beside) == 1 else series[0]),
                         fix="repair the slice's header, or put a separate series in its"
                         " own folder")
    unreadable = problem_messages(series[0], Problem.UNREADABLE_IN_SERIES_FOLDER)
    if unreadable:
        beside = [r for r in lone if r["modality"] == "UNREADABLE"]
        raise DicomError(f"CT series refused: {unreadable[0]}", patient=patient_id,
                         path=_first_file(beside[0] if beside else series[0]),
                         fix="replace the damaged file with a good copy, or remove it if it"
                         " is not a slice of this series")
    others = [r for r in mine if r["modality"] == "CT" and r is not series[0]]
    if others:
        warnings.append(f"{len(others)} other CT series ignored (not referenced by the"
                        f" {noun})")
    warnings.extend(f"{noun}: {p}" for p in struct["problems"])
    root = _root(dicom_root or series[0].get("dicom_root"), series[0]["files"])
    return PatientInputs(
        patient_id=patient_id,
        ct_files=[str(root / f) for f in series[0]["files"]],
        rtstruct=str(root / struct["files"][0]) if noun == "RTSTRUCT" else "",
        warnings=warnings,
        root=str(root),
        seg=str(root / struct["files"][0]) if noun != "RTSTRUCT" else "",
    )


_DAMAGED = frozenset({Problem.TRUNCATED, Problem.MALFORMED_RTSTRUCT, Problem.MALFORMED_SEG})


def _noun(rows: list[dict]) -> str:
    """What the rows are: "RTSTRUCT", "DICOM-SEG" or "RTSTRUCT or DICOM-SEG"."""
    kinds = {r["modality"] for r in rows}
    return ("RTSTRUCT" if kinds <= {"RTSTRUCT"} else "DICOM-SEG" if kinds == {"SEG"}
            else "RTSTRUCT or DICOM-SEG")


def _first_file(row: dict) -> str | None:
    """The row's first file, relative to the DICOM root (as the index records it)."""
    return row["files"][0] if row["files"] else None


def _sop(row: dict) -> str:
    return row.get("sop_instance_uid") or "?"


def _root(root: str | Path | None, files: list[str]) -> Path:
    """The absolute DICOM root, checked to hold the series' files."""
    fix = ("give the folder that was indexed: `mmfusion convert --dicom-root DIR` (the"
           " workflow passes cohort.dicom_root), or re-run `mmfusion index`")
    if not root:
        raise ConfigError("the DICOM index does not record where the DICOM root is", fix=fix)
    root = Path(os.path.abspath(root))
    if files and not any((root / f).is_file() for f in files):
        raise ConfigError("the files of the DICOM index are not under the DICOM root (a"
                          " moved index or archive, or another root)", path=files[0], fix=fix)
    return root


def inputs_from_index(index_tsv: str | Path, patient: str, settings: RoiPatterns,
                      dicom_root: str | Path | None = None) -> PatientInputs:
    """`select_inputs` on an index TSV; `dicom_root` defaults to the one it records
    (relative to the index file's folder)."""
    return select_inputs(read_index(index_tsv), patient, settings, dicom_root)


def inputs_from_folder(folder: str | Path, settings: RoiPatterns,
                       workers: int = 1) -> PatientInputs:
    """Crawl one patient's folder and select its inputs; refuse several PatientIDs."""
    rows = index_dicom(folder, workers=workers, progress=False)
    ids = sorted({r["patient"] for r in rows if r["patient"] and r["patient"] != NO_PATIENT_ID})
    if not ids:
        raise DicomError("no DICOM object with a PatientID in the folder", path=str(folder))
    if len(ids) > 1:
        raise DicomError(f"the folder holds {len(ids)} PatientIDs ({', '.join(ids[:5])})",
                         path=str(folder),
                         fix="convert one patient per folder, or use `--index` with `--patient`")
    return select_inputs(rows, ids[0], settings)
