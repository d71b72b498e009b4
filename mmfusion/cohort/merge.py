"""Joining tables, radiomics rows and conversion statuses into the cohort table.

A patient enters `table.tsv` only when it was converted (status ok), has a radiomics row,
a clinical row with a label and a hematology row. Everyone else is listed in
`qc/exclusions.tsv` with the stage and the reason; nobody disappears silently.

Patient IDs: tables hold raw IDs, image folders sanitised ones (`mmfusion.ids`). The join
sanitises table IDs; `table.tsv` carries the sanitised ID (= the patient folder name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmfusion.cohort.status import read_convert_status
from mmfusion.cohort.tables import TableSettings, read_tables
from mmfusion.errors import TableError
from mmfusion.ids import NO_PATIENT_ID, sanitize_id
from mmfusion.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

SPEC_VERSION = 1
# Appended unscaled to the node radiomics group: whether the patient has GTV-N and how many
# nodes (ROIs / connected components) were contoured, the strongest nodal finding.
NODE_FLAGS = ["gtvn_present", "gtvn_count"]
INFO_COLUMNS: list[str] = []
EXCLUSION_COLUMNS = ["patient_id", "stage", "reason"]
_NO_PATIENT_ID_REASON = ("DICOM objects without a PatientID: they cannot be joined to a"
                         " clinical row (listed in dicom_index.tsv with problem no_patient_id)")


@dataclass
class Cohort:
    """The merged table, its feature spec and the exclusions."""

    table: pd.DataFrame
    spec: dict[str, Any]
    exclusions: pd.DataFrame

    def write(self, table_tsv: str | Path, spec_json: str | Path,
              exclusions_tsv: str | Path) -> None:
        """Write the three outputs atomically."""
        with atomic_path(table_tsv) as tmp:
            self.table.to_csv(tmp, sep="\t", index=False, float_format="%.10g")
        write_text_atomic(spec_json, json.dumps(self.spec, indent=1) + "\n")
        with atomic_path(exclusions_tsv) as tmp:
            self.exclusions.to_csv(tmp, sep="\t", index=False)


def read_cohort_table(path: str | Path, spec: dict[str, Any]) -> pd.DataFrame:
    """Read `table.tsv` back with IDs and categorical columns as text."""
    text = {"patient_id": str}
    for group in ("clinical", "hematology"):
        text.update({c: str for c in spec["groups"][group].get("categorical", {})})
    return pd.read_csv(path, sep="\t", dtype=text)


def _sanitised_index(df: pd.DataFrame, path: str) -> pd.DataFrame:
    safe = [sanitize_id(i) for i in df.index]
    first: dict[str, str] = {}
    for raw, folder in zip(df.index, safe, strict=True):
        if folder in first:
            raise TableError(f"patient IDs {first[folder]!r} and {raw!r} map to the same"
                             f" folder name {folder!r}", patient=str(raw), path=path,
                             fix="give each patient a distinct ID")
        first[folder] = raw
    out = df.copy()
    out.index = pd.Index(safe, name="patient_id")
    return out


def read_radiomics_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate per-patient `radiomics.tsv` rows; all must have the same columns."""
    rows, columns = [], None
    for p in paths:
        try:
            df = pd.read_csv(p, sep="\t", dtype={"patient_id": str})
        except pd.errors.EmptyDataError:
            raise TableError("empty radiomics row file", path=str(p),
                             fix="re-run the extract_radiomics rule for this patient") from None
        if df.shape[0] != 1:
            raise TableError(f"expected one row, found {df.shape[0]}", path=str(p))
        numeric = df.drop(columns="patient_id", errors="ignore").select_dtypes("number")
        infinite = [c for c in numeric.columns if np.isinf(numeric[c].to_numpy(float)).any()]
        if infinite:
            raise TableError(f"infinite radiomics value(s) in column(s) {infinite[:5]}",
                             patient=str(df["patient_id"].iloc[0]) if "patient_id" in df
                             else None, path=str(p),
                             fix="check this patient's masks; re-run extract_radiomics")
        if columns is None:
            columns = list(df.columns)
        elif list(df.columns) != columns:
            raise TableError("radiomics columns differ from the other patients'", path=str(p),
                             fix="re-run the radiomics rule for every patient with one params file")
        rows.append(df)
    if not rows:
        return pd.DataFrame(columns=["patient_id"]).set_index("patient_id")
    return pd.concat(rows, ignore_index=True).set_index("patient_id")


def build_cohort(
    clinical: str | Path,
    hematology: str | Path | None,
    status_paths: Iterable[str | Path],
    settings: TableSettings,
    *,
    unlinked_patients: Iterable[str] = (),
) -> Cohort:
    """Merge tables, radiomics rows (found beside each ok status) and statuses.

    Args:
        clinical, hematology: the tables (hematology may be None: no hematology data).
        status_paths: every patient's `convert_status.json` (ok and excluded).
        settings: table declarations.
        unlinked_patients: sanitised IDs found in the DICOM index without a CT linked to
            an RTSTRUCT (listed as excluded at the index stage); `ids.NO_PATIENT_ID` stands
            for the objects that have no PatientID.
    """
    clin, hema = read_tables(clinical, hematology, settings)
    clin = _sanitised_index(clin, str(clinical))
    hema = _sanitised_index(hema, str(hematology))
    excl: list[dict[str, str]] = []
    ok: dict[str, Path] = {}
    for path in status_paths:
        path = Path(path)
        st = read_convert_status(path)
        pid = path.parent.name
        if st["status"] == "ok":
            ok[pid] = path.parent / "radiomics.tsv"
        else:
            excl.append({"patient_id": pid, "stage": "convert",
                         "reason": st["reason"] or "excluded at conversion"})
    seen = set(ok) | {e["patient_id"] for e in excl}
    for pid in sorted(set(unlinked_patients) - seen):
        excl.append({"patient_id": pid, "stage": "index",
                     "reason": _NO_PATIENT_ID_REASON if pid == NO_PATIENT_ID
                     else "no CT series linked to an RTSTRUCT"})
        seen.add(pid)
    for pid in sorted((set(clin.index) | set(hema.index)) - seen):
        excl.append({"patient_id": pid, "stage": "cohort",
                     "reason": "in the tables but no images (not in the DICOM index)"})
    keep = []
    for pid in sorted(ok):
        reason = None
        if pid not in clin.index:
            reason = "not in the clinical table"
        elif pd.isna(clin.at[pid, "label"]):
            reason = f"no label ({settings.label_column} missing)"
        elif pid not in hema.index:
            reason = "not in the hematology table"
        if reason:
            excl.append({"patient_id": pid, "stage": "cohort", "reason": reason})
        else:
            keep.append(pid)
    missing = [str(ok[p]) for p in keep if not ok[p].is_file()]
    if missing:
        raise TableError(f"radiomics rows missing for {len(missing)} converted patient(s)",
                         path=missing[0], fix="run the extract_radiomics rule first")
    rad = read_radiomics_rows(ok[p] for p in keep)
    rad.index = pd.Index([str(i) for i in rad.index], name="patient_id")
    wrong = [p for p in keep if p not in rad.index]
    if wrong:
        raise TableError("radiomics.tsv patient_id does not match its folder", patient=wrong[0])

    table = pd.concat([clin.loc[keep, ["label", *settings.clinical.columns]],
                       hema.loc[keep, settings.hematology.columns],
                       rad.loc[keep]], axis=1)
    table["label"] = table["label"].astype(int)
    table = table.reset_index()
    rad_cols = list(rad.columns)
    spec = {
        "version": SPEC_VERSION,
        "id_column": "patient_id",
        "label_column": "label",
        "positive_value": list(settings.positive_value),
        "groups": {
            "clinical": {"numeric": list(settings.clinical.numeric),
                         "categorical": {k: list(v) for k, v in
                                         settings.clinical.categorical.items()}},
            "hematology": {"numeric": list(settings.hematology.numeric),
                           "categorical": {k: list(v) for k, v in
                                           settings.hematology.categorical.items()}},
            "radiomics_tumour": [c for c in rad_cols if c.startswith("gtvt_")],
            "radiomics_node": [c for c in rad_cols if c.startswith("gtvn_")
                               and c not in NODE_FLAGS + INFO_COLUMNS],
        },
        "flags": {"radiomics_node": [c for c in NODE_FLAGS if c in rad_cols]},
        "info_columns": [c for c in INFO_COLUMNS if c in rad_cols],
        "n_patients": int(table.shape[0]),
        "n_positive": int(table["label"].sum()) if len(table) else 0,
        # file names only: outputs hold no input paths (they may name a site or a person)
        "sources": {"clinical": Path(clinical).name,
                    "hematology": Path(hematology).name if hematology else ""},
    }
    exclusions = pd.DataFrame(excl, columns=EXCLUSION_COLUMNS)
    exclusions = exclusions.sort_values(["patient_id", "stage"], kind="stable")
    for row in exclusions.itertuples():
        log.info("excluded %s at %s: %s", row.patient_id, row.stage, row.reason)
    return Cohort(table=table, spec=spec, exclusions=exclusions.reset_index(drop=True))
