"""The new patients' clinical and hematology tables, checked against the bundle.

The bundle's table declarations (`settings.json`: ID and label columns, positive and
negative values, feature columns and their levels) are used, never a current config. A
column the models need and the table lacks, or a category the bundle does not know, is
refused in one line; the label column is optional (without it there is nothing to
evaluate, only to predict).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmfusion.cohort.tables import (
    MISSING_TOKENS,
    ColumnSpec,
    TableSettings,
    cell_text,
    read_table,
    validate_table,
)
from mmfusion.errors import TableError
from mmfusion.ids import sanitize_id
from mmfusion.predict.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class NewTables:
    """Validated tables indexed by the sanitised patient ID (the patient folder name)."""

    settings: TableSettings
    clinical: pd.DataFrame  # `label` (1/0/NaN, when has_label) + declared columns
    hematology: pd.DataFrame | None  # None: the bundle needs no hematology columns
    has_label: bool
    raw: dict[str, pd.DataFrame]  # the raw-ID-indexed tables (for the preflight ID checks)

    def columns(self) -> list[str]:
        return [*self.settings.clinical.columns, *self.settings.hematology.columns]


def table_settings(bundle: Bundle) -> TableSettings:
    return TableSettings.from_config(bundle.settings["cohort"], bundle.settings["tables"])


def _check_against_bundle(raw: pd.DataFrame, spec: ColumnSpec, settings: TableSettings,
                          path: str, what: str) -> None:
    """Refuse a table that lacks a column the models need or holds an unknown category."""
    need = [settings.id_column, *spec.columns]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise TableError(f"the {what} table lacks column(s) {missing} that the bundle's "
                         f"models need (it has: {list(raw.columns)})", path=path,
                         fix="add the column(s); empty cells are imputed as in training")
    for col, levels in spec.categorical.items():
        known = {cell_text(v) for v in levels}
        for pid, cell in zip(raw[settings.id_column], raw[col], strict=True):
            text = str(cell).strip()
            if text.lower() in MISSING_TOKENS or cell_text(text) in known:
                continue
            raise TableError(f"column {col}: category {text!r} was never seen by the "
                             f"bundle's models (they know {list(levels)})",
                             patient=str(pid).strip(), path=path,
                             fix=f"recode it to one of {list(levels)}, or leave the cell "
                                 "empty (imputed as missing)")


def _by_folder(table: pd.DataFrame, path: str) -> pd.DataFrame:
    safe = [sanitize_id(str(i)) for i in table.index]
    if len(set(safe)) != len(safe):
        dup = sorted({s for s in safe if safe.count(s) > 1})
        raise TableError(f"patient IDs map to the same folder name(s) {dup[:5]}", path=path,
                         fix="give each patient a distinct ID")
    out = table.copy()
    out.index = pd.Index(safe, name="patient_id")
    return out


def read_new_tables(clinical: str | Path, hematology: str | Path | None,
                    bundle: Bundle) -> NewTables:
    """Read and check the new patients' tables with the bundle's declarations.

    Raises:
        TableError: a missing column, an unknown category, no hematology table where the
            models need one, or anything `validate_table` refuses (numbers, IDs, labels).
    """
    settings = table_settings(bundle)
    raw_clin = read_table(clinical)
    _check_against_bundle(raw_clin, settings.clinical, settings, str(clinical), "clinical")
    has_label = settings.label_column in raw_clin.columns
    if not has_label:
        log.info("%s has no %r column: predictions only, nothing to evaluate", clinical,
                 settings.label_column)
    clin = validate_table(raw_clin, settings.clinical, settings, path=str(clinical),
                          with_label=has_label)
    raw = {"clinical": clin}
    hema = None
    if settings.hematology.columns:
        if not hematology:
            raise TableError("the bundle's models need a hematology table with column(s) "
                             f"{settings.hematology.columns}",
                             fix="pass --hematology (external.hematology in the workflow)")
        raw_hema = read_table(hematology)
        _check_against_bundle(raw_hema, settings.hematology, settings, str(hematology),
                              "hematology")
        hema = validate_table(raw_hema, settings.hematology, settings, path=str(hematology),
                              with_label=False)
        raw["hematology"] = hema
        hema = _by_folder(hema, str(hematology))
    elif hematology:
        log.info("the bundle uses no hematology column: %s is not read", hematology)
    return NewTables(settings=settings, clinical=_by_folder(clin, str(clinical)),
                     hematology=hema, has_label=has_label, raw=raw)
