"""Reading and validating the clinical and hematology tables.

Config declares the ID column, the label column with its positive (and negative) values,
and which columns are numeric or categorical (with their levels). Undeclared columns are
ignored; declared ones are checked: numbers parse, categories are known levels, IDs are
unique and non-empty, labels are one of the declared values, numbers are finite (`inf` is
refused, naming the column and patients). Missing cells (empty, NA, NaN, ?) stay missing
and are imputed later, inside each fold. An empty file is refused in one line.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmfusion.errors import ConfigError, TableError
from mmfusion.settings import section_defaults

log = logging.getLogger(__name__)

MISSING_TOKENS = ("", "na", "n/a", "nan", "none", "null", "?", "missing", ".")


@dataclass(frozen=True)
class ColumnSpec:
    """Declared feature columns of one table."""

    numeric: tuple[str, ...] = ()
    categorical: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, where: str) -> ColumnSpec:
        section = dict(section or {})
        unknown = sorted(set(section) - {"numeric", "categorical"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where}",
                              fix="use `numeric: [...]` and `categorical: {column: [levels]}`")
        cat = {str(k): tuple(str(v) for v in levels)
               for k, levels in (section.get("categorical") or {}).items()}
        for name, levels in cat.items():
            if len(levels) < 2 or len(set(levels)) != len(levels):
                raise ConfigError(f"{where}.categorical.{name} needs two or more distinct levels")
        numeric = tuple(str(c) for c in section.get("numeric") or ())
        both = set(numeric) & set(cat)
        if both:
            raise ConfigError(f"{where}: columns declared numeric and categorical: {sorted(both)}")
        return cls(numeric=numeric, categorical=cat)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass(frozen=True)
class TableSettings:
    """How the cohort tables are keyed and typed (config `cohort` keys + `tables`)."""

    id_column: str
    label_column: str
    positive_value: tuple[str, ...]
    negative_value: tuple[str, ...]
    clinical: ColumnSpec = field(default_factory=ColumnSpec)
    hematology: ColumnSpec = field(default_factory=ColumnSpec)

    @classmethod
    def from_config(cls, cohort: Mapping[str, Any], tables: Mapping[str, Any]) -> TableSettings:
        """Build from the `cohort` section (id/label keys) and the `tables` section; omitted
        keys take the config schema's defaults."""
        tables = {**section_defaults("tables"), **dict(tables or {})}
        unknown = sorted(set(tables) - {"clinical", "hematology", "negative_value"})
        if unknown:
            raise ConfigError(f"unknown tables setting(s): {unknown}")
        cohort = {**section_defaults("cohort"), **dict(cohort or {})}

        def values(v: Any) -> tuple[str, ...]:
            return tuple(cell_text(x) for x in (v if isinstance(v, (list, tuple)) else [v]))

        pos = values(cohort["positive_value"])
        neg = values(tables["negative_value"])
        if set(pos) & set(neg):
            raise ConfigError("cohort.positive_value and tables.negative_value overlap")
        clinical = ColumnSpec.from_config(tables.get("clinical"), "tables.clinical")
        hema = ColumnSpec.from_config(tables.get("hematology"), "tables.hematology")
        label = str(cohort["label_column"])
        ident = str(cohort["id_column"])
        clash = set(clinical.columns) & set(hema.columns)
        if clash:
            raise ConfigError(f"columns declared in both tables: {sorted(clash)}",
                              fix="declare each feature column in one table only")
        if label in hema.columns or label in clinical.columns or ident in clinical.columns:
            raise ConfigError("the id/label columns must not be declared as features")
        return cls(id_column=ident, label_column=label, positive_value=pos, negative_value=neg,
                   clinical=clinical, hematology=hema)


def cell_text(value: Any) -> str:
    """Canonical text of a cell for comparisons: '1', '1.0' and 1 are the same number."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(int(number)) if number.is_integer() else repr(number)


def _overflow(text: str) -> float:
    """±inf for a number too large for a float ('1e999'), else NaN."""
    try:
        value = float(text)
    except ValueError:
        return np.nan
    return value if np.isinf(value) else np.nan


def _csv_separator(path: Path) -> str:
    """`;` when the header line of a .csv has semicolons and no commas, else `,`."""
    with open(path, errors="replace") as fh:
        header = fh.readline()
    return ";" if ";" in header and "," not in header else ","


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or TSV as text cells (separator from the extension, else sniffed)."""
    p = Path(path)
    if not p.is_file():
        raise TableError("table not found", path=str(p), fix="check cohort.clinical / hematology")
    suffix = p.suffix.lower()
    if suffix in (".tsv", ".tab", ".txt"):
        sep = "\t"
    elif suffix == ".csv":
        # spreadsheet exports in many locales write `;` (the decimal comma takes `,`)
        sep = _csv_separator(p)
    else:
        try:
            sep = csv.Sniffer().sniff(p.read_text(errors="replace")[:4096], ",\t;").delimiter
        except csv.Error as err:
            raise TableError("cannot tell the column separator", path=str(p),
                             fix="save the table as .csv or .tsv") from err
    try:
        table = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise TableError("the table is empty (no header line)", path=str(p),
                         fix="export the table again, with a header line and one row per"
                         " patient") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise TableError(f"cannot parse table: {' '.join(str(err).split())}",
                         path=str(p)) from None
    if table.empty:
        raise TableError("the table has a header line but no rows", path=str(p),
                         fix="export the table again, with one row per patient")
    return table


def validate_table(
    raw: pd.DataFrame, spec: ColumnSpec, settings: TableSettings, *, path: str,
    with_label: bool,
) -> pd.DataFrame:
    """Typed table indexed by the raw patient ID: declared columns (+ `label` 0/1/NaN).

    Raises:
        TableError: missing columns, empty or duplicate IDs, unparsable numbers, unknown
            categories, label values that are neither positive nor negative.
    """
    need = [settings.id_column, *([settings.label_column] if with_label else []), *spec.columns]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise TableError(f"column(s) {missing} not in table (has: {list(raw.columns)})",
                         path=path, fix="fix the table or the column declarations in config")
    ids = raw[settings.id_column].astype(str).str.strip()
    if (ids == "").any():
        rows = [int(i) + 2 for i in np.flatnonzero(ids == "")]
        raise TableError(f"empty patient ID on line(s) {rows}", path=path)
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise TableError(f"duplicate patient ID(s): {dup}", patient=dup[0], path=path,
                         fix="keep one row per patient")
    out = pd.DataFrame(index=pd.Index(ids, name="patient_id"))

    def cells(col: str) -> pd.Series:
        s = raw[col].astype(str).str.strip()
        s.index = out.index
        return s.mask(s.str.lower().isin(MISSING_TOKENS))

    if with_label:
        lab = cells(settings.label_column)
        norm = lab.map(lambda v: v if pd.isna(v) else cell_text(v))
        bad = norm.notna() & ~norm.isin(settings.positive_value + settings.negative_value)
        if bad.any():
            pid = norm.index[bad][0]
            raise TableError(
                f"label {settings.label_column}={lab[pid]!r} is neither positive "
                f"{list(settings.positive_value)} nor negative {list(settings.negative_value)}",
                patient=pid, path=path,
                fix="set cohort.positive_value / tables.negative_value to the table's codes")
        out["label"] = np.where(norm.isna(), np.nan,
                                norm.isin(settings.positive_value).astype(float))
    for col in spec.numeric:
        s = cells(col)
        num = pd.to_numeric(s, errors="coerce")
        bad = s.notna() & num.isna()
        if bad.any():  # pandas reads an overflowing '1e999' as not-a-number: it is infinite
            num[bad] = s[bad].map(_overflow)
            bad = s.notna() & num.isna()
        if bad.any():
            pid = s.index[bad][0]
            raise TableError(f"column {col}: {s[pid]!r} is not a number", patient=pid, path=path,
                             fix=f"correct the value or declare {col} as categorical")
        infinite = np.isinf(num.to_numpy(dtype=float))
        if infinite.any():
            pids = list(s.index[infinite])
            lines = [int(i) + 2 for i in np.flatnonzero(infinite)]
            raise TableError(
                f"column {col}: infinite value {s[pids[0]]!r} for patient(s) {pids[:5]}"
                f" (line(s) {lines[:5]})", patient=pids[0], path=path,
                fix="enter a finite number, or leave the cell empty if it is unknown")
        out[col] = num.astype(float)
    for col, levels in spec.categorical.items():
        s = cells(col)
        known = {cell_text(v): v for v in levels}
        # a boolean mask, not a sentinel string: pandas 3's string dtype compares "\0" as ""
        bad = s.map(lambda v, k=known: not pd.isna(v) and cell_text(v) not in k).astype(bool)
        if bad.any():
            pid = s.index[bad][0]
            raise TableError(f"column {col}: unknown category {s[pid]!r} (levels {list(levels)})",
                             patient=pid, path=path,
                             fix=f"add it to tables.*.categorical.{col} or correct the table")
        out[col] = s.map(lambda v, k=known: v if pd.isna(v) else k[cell_text(v)])
    ignored = [c for c in raw.columns if c not in need]
    if ignored:
        log.info("%s: ignoring undeclared column(s) %s", path, ignored)
    return out


def read_tables(
    clinical: str | Path, hematology: str | Path | None, settings: TableSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated clinical (with `label`) and hematology tables, indexed by raw patient ID.

    Without a hematology table (None) no hematology columns may be declared; every
    clinical patient then has an empty hematology row.
    """
    clin = validate_table(read_table(clinical), settings.clinical, settings,
                          path=str(clinical), with_label=True)
    if hematology is None or str(hematology) == "":
        if settings.hematology.columns:
            raise TableError("hematology columns are declared but no hematology table given",
                             fix="set cohort.hematology or empty tables.hematology")
        return clin, pd.DataFrame(index=clin.index)
    hema = validate_table(read_table(hematology), settings.hematology, settings,
                          path=str(hematology), with_label=False)
    return clin, hema

