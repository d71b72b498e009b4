"""Preflight: the DICOM index crossed with the tables and the config before any conversion.

A run on a real archive spends hours converting, cropping and training; a wrong ID
column, an ROI regex that matches nothing or a table that fails validation would only show
at the end. This check runs in seconds right after the index and sorts what it finds into
errors (the results would be wrong or empty: the run stops) and warnings (patients that
will be excluded, with the reason, while the rest go on). Rule `preflight`
(workflow/rules/ingest.smk), command `mmfusion check`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mmfusion.dicom.index import is_mask_row
from mmfusion.dicom.index_io import read_index
from mmfusion.dicom.rois import compile_roi_regex, match_rois
from mmfusion.errors import MMFusionError
from mmfusion.ids import NO_PATIENT_ID, sanitize_id

ERROR, WARNING = "error", "warning"
COLUMNS = ("severity", "kind", "patient_id", "detail")
# each test fold needs a patient of each class (fewer per class than folds: an error);
# fewer than this many per fold leaves the validation splits one patient (a warning)
MIN_PER_CLASS_PER_FOLD = 2


@dataclass(frozen=True)
class Finding:
    """One preflight finding: `kind` is a stable code, `detail` the human sentence."""

    severity: str  # error (stops the run) | warning (the patient is excluded later)
    kind: str
    patient_id: str  # "" when the finding is about the whole cohort
    detail: str


@dataclass(frozen=True)
class PreflightInputs:
    """What the check reads: the index, the tables and the settings that use them."""

    index_tsv: str | Path
    clinical: str | Path
    hematology: str | Path | None
    tables: object  # mmfusion.cohort.tables.TableSettings
    tumour_regex: str
    node_regex: str
    n_folds: int
    manifest_index: str | Path | None = None  # manifest_index.tsv (the manifest route)


def _index_patients(rows: list[dict]) -> tuple[dict[str, set[str]], dict[str, list[str]],
                                                set[str]]:
    """(sanitised ID -> original IDs, linked patient -> ROI names, all sanitised IDs)."""
    originals: dict[str, set[str]] = defaultdict(set)
    rois: dict[str, list[str]] = {}
    for row in rows:
        pid = row.get("patient") or ""
        if not pid:
            continue
        originals[pid].add(row.get("patient_id") or "")
        if is_mask_row(row) and row.get("linked_series_uid"):  # RTSTRUCT or DICOM-SEG
            rois.setdefault(pid, []).extend(row.get("roi_names") or [])
    return originals, rois, set(originals)


def _table_ids(df: pd.DataFrame) -> dict[str, str]:
    """Sanitised -> raw ID of a validated table."""
    return {sanitize_id(str(raw)): str(raw) for raw in df.index}


def check_tables(inputs: PreflightInputs) -> tuple[list[Finding], pd.DataFrame | None,
                                                   pd.DataFrame | None]:
    """Validate the tables exactly as the cohort stage will; a failure is an error."""
    from mmfusion.cohort.tables import read_tables

    try:
        clin, hema = read_tables(inputs.clinical, inputs.hematology or None, inputs.tables)
    except MMFusionError as err:
        return [Finding(ERROR, "table", err.patient or "", str(err))], None, None
    return [], clin, hema


def check_rois(inputs: PreflightInputs, rois: dict[str, list[str]]) -> list[Finding]:
    """Linked patients whose RTSTRUCT/DICOM-SEG has no ROI (SEG: segment label) matching
    the tumour regex (listing what is there); an error when no patient matches at all
    (the regex, not the data, is wrong)."""
    findings: list[Finding] = []
    try:
        tumour = compile_roi_regex(inputs.tumour_regex, "tumour")
        node = compile_roi_regex(inputs.node_regex, "node")
    except MMFusionError as err:
        return [Finding(ERROR, "invalid_regex", "", str(err))]
    no_tumour = [pid for pid, names in rois.items() if not match_rois(names, tumour)]
    for pid in sorted(no_tumour):
        present = ", ".join(sorted(set(rois[pid]))) or "none"
        findings.append(Finding(WARNING, "no_tumour_roi", pid,
                                f"no ROI matches rois.tumour; ROIs present: {present}"))
    if rois and len(no_tumour) == len(rois):
        names = Counter(n for names in rois.values() for n in set(names))
        common = ", ".join(f"{n} ({c})" for n, c in names.most_common(12))
        findings.append(Finding(ERROR, "no_tumour_roi_anywhere", "",
                                f"rois.tumour {inputs.tumour_regex!r} matches no ROI of any "
                                f"patient; most common ROI names: {common}"))
    if rois and not any(match_rois(names, node) for names in rois.values()):
        findings.append(Finding(WARNING, "no_node_roi_anywhere", "",
                                f"rois.node {inputs.node_regex!r} matches no ROI of any "
                                "patient (every node patch will be empty)"))
    return findings


def check_ids(originals: dict[str, set[str]], clin: pd.DataFrame | None,
              hema: pd.DataFrame | None) -> list[Finding]:
    """Two original IDs on one folder name (index or tables), and objects without an ID."""
    findings = []
    for pid, raw in sorted(originals.items()):
        if pid == NO_PATIENT_ID:
            findings.append(Finding(WARNING, "no_patient_id", pid,
                                    "DICOM objects without a PatientID (excluded)"))
        elif len(raw) > 1:
            findings.append(Finding(ERROR, "id_collision", pid,
                                    f"different PatientIDs map to one folder: {sorted(raw)}"))
    for name, df in (("clinical", clin), ("hematology", hema)):
        if df is None:
            continue
        by_safe: dict[str, list[str]] = defaultdict(list)
        for raw in df.index:
            by_safe[sanitize_id(str(raw))].append(str(raw))
        for pid, raws in sorted(by_safe.items()):
            if len(raws) > 1:
                findings.append(Finding(ERROR, "id_collision", pid,
                                        f"{name} table IDs map to one folder: {raws}"))
    return findings


def check_linkage(inputs: PreflightInputs, all_ids: set[str], rois: dict[str, list[str]],
                  clin: pd.DataFrame, hema: pd.DataFrame | None) -> list[Finding]:
    """Patients with images but no table row, with a table row but no images, without a
    label; and whether enough usable patients of each class remain for the folds."""
    findings = []
    clin_ids, hema_ids = _table_ids(clin), _table_ids(hema) if hema is not None else None
    for pid in sorted(set(rois) - set(clin_ids)):
        findings.append(Finding(WARNING, "no_table_row", pid,
                                f"images but no row in the clinical table "
                                f"({inputs.tables.id_column} column)"))
    if hema_ids is not None:
        for pid in sorted(set(rois) & set(clin_ids) - set(hema_ids)):
            findings.append(Finding(WARNING, "no_table_row", pid,
                                    "images but no row in the hematology table"))
    for pid in sorted(set(clin_ids) - all_ids):
        findings.append(Finding(WARNING, "no_images", pid,
                                "in the clinical table but not in the DICOM index or the"
                                " manifest"))
    for pid in sorted(set(clin_ids) & all_ids - set(rois)):
        findings.append(Finding(WARNING, "no_images", pid,
                                "in the DICOM index but no CT series linked to an RTSTRUCT"
                                " or DICOM-SEG"))
    usable = [pid for pid in rois if pid in clin_ids
              and (hema_ids is None or pid in hema_ids)]
    labels = clin["label"].rename(index=lambda raw: sanitize_id(str(raw)))
    for pid in sorted(p for p in usable if pd.isna(labels.get(p))):
        findings.append(Finding(WARNING, "missing_label", pid,
                                f"no value in {inputs.tables.label_column}"))
    counts = Counter(int(labels[p]) for p in usable if not pd.isna(labels.get(p)))
    have = (f"{counts[1]} positive and {counts[0]} negative patients have images, table rows "
            "and a label")
    if min(counts[0], counts[1]) < inputs.n_folds:
        findings.append(Finding(
            ERROR, "too_few_per_class", "",
            f"{have}; {inputs.n_folds} folds need at least {inputs.n_folds} of each class "
            "(one per test fold; check cohort.id_column, the label values and the DICOM root)"))
    elif min(counts[0], counts[1]) < MIN_PER_CLASS_PER_FOLD * inputs.n_folds:
        findings.append(Finding(
            WARNING, "few_per_class", "",
            f"{have}; with {inputs.n_folds} folds each test fold and validation split holds "
            "one or two of the rarer class, so per-fold metrics rest on very few patients"))
    return findings


def check_manifest(manifest: list[dict], dicom_patients: set[str]) -> list[Finding]:
    """Manifest patients also in the DICOM archive (an error: which images would be used is
    not ours to guess) and manifest patients whose files have problems (excluded later)."""
    findings = []
    for row in manifest:
        if row["patient"] in dicom_patients:
            findings.append(Finding(ERROR, "two_sources", row["patient"],
                                    "in the manifest and in the DICOM archive: a patient "
                                    "comes from one of them (remove its manifest row or its "
                                    "DICOM files)"))
        for problem in row["problems"]:
            findings.append(Finding(WARNING, "manifest_file", row["patient"], problem))
    return findings


def run_preflight(inputs: PreflightInputs) -> list[Finding]:
    """Every finding, errors first within each kind's order of appearance."""
    from mmfusion.images.manifest import read_manifest_index

    rows = read_index(inputs.index_tsv)
    originals, rois, all_ids = _index_patients(rows)
    manifest = read_manifest_index(inputs.manifest_index) if inputs.manifest_index else []
    findings, clin, hema = check_tables(inputs)
    findings += check_manifest(manifest, set(rois))
    # segment names of manifest masks that are named segmentations are matched like ROIs
    findings += check_rois(inputs, {**rois, **{r["patient"]: r["segment_names"]
                                               for r in manifest if r["segment_names"]}})
    for row in manifest:
        originals[row["patient"]].add(row["patient_id"])
        all_ids.add(row["patient"])
    images = {**{r["patient"]: r["segment_names"] for r in manifest}, **rois}
    findings += check_ids(originals, clin, hema)
    if clin is not None:
        findings += check_linkage(inputs, all_ids, images, clin, hema)
    return sorted(findings, key=lambda f: (f.severity != ERROR, f.kind, f.patient_id))


def summary_lines(findings: Iterable[Finding]) -> list[str]:
    """One line per (severity, kind) with its count and the first detail."""
    groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.severity, f.kind)].append(f)
    lines = []
    for (severity, kind), items in sorted(groups.items(), key=lambda kv: kv[0][0] != ERROR):
        first = items[0]
        who = f" (e.g. {first.patient_id})" if first.patient_id else ""
        lines.append(f"{severity}: {kind} x{len(items)}{who}: {first.detail}")
    return lines


def findings_table(findings: Iterable[Finding]) -> pd.DataFrame:
    return pd.DataFrame([asdict(f) for f in findings], columns=list(COLUMNS))
