"""The manifest (one row per patient: CT image, tumour mask, node masks) and its index.

Columns: `patient_id` (the tables' ID), `image` (NIfTI `.nii`/`.nii.gz`, NRRD
`.nrrd`/`.nhdr`, MetaImage `.mha`/`.mhd`, or a folder holding one DICOM CT series),
`tumour` (a mask file), optional `nodes` (mask files separated by `;`, or empty) and
optional `tumour_label` (the tumour's value in a label map that holds more than one).
Relative paths resolve against the manifest's folder.

A problem with the manifest itself (missing column, duplicate ID) stops the run
(`ConfigError`); a problem with one patient's files is recorded in the index as that
patient's `problems`, and conversion excludes the patient with that reason.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mmfusion.errors import ConfigError
from mmfusion.ids import sanitize_id

REQUIRED = ("patient_id", "image", "tumour")
OPTIONAL = ("nodes", "tumour_label")
NODE_SEPARATOR = ";"
INDEX_COLUMNS = ("patient_id", "patient", "image", "tumour", "nodes", "tumour_label",
                 "segment_names", "problems", "manifest_dir")
PROBLEM_SEPARATOR = " | "


@dataclass(frozen=True)
class ManifestEntry:
    """One patient of the manifest, paths absolute."""

    patient_id: str  # as written (the tables' ID)
    patient: str  # sanitised: the folder name under results/patients/
    image: str
    tumour: str
    nodes: tuple[str, ...]
    tumour_label: int | None
    line: int  # line of the manifest (for messages)

    @property
    def masks(self) -> tuple[str, ...]:
        return (self.tumour, *self.nodes)


def _delimiter(path: Path, header: str) -> str:
    """Tab or comma: the one the header line uses (by the suffix when it holds both)."""
    if ("\t" in header) != ("," in header):
        return "\t" if "\t" in header else ","
    return "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","


def _label(text: str, path: Path, line: int) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or value <= 0:
        raise ConfigError(f"line {line}: tumour_label {text!r} is not a positive integer",
                          path=str(path), fix="give the tumour's value in its label map, e.g. 1")
    return int(value)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """The manifest's rows, checked for structure (columns, IDs); files are not opened.

    Raises:
        ConfigError: unreadable manifest, a missing column, an empty cell in a required
            column, or two rows for one patient (also after sanitising the ID).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the manifest: {err}", path=str(path),
                          fix="set cohort.manifest to a CSV/TSV file") from None
    header = text.splitlines()[0] if text.strip() else ""
    reader = csv.DictReader(text.splitlines(), delimiter=_delimiter(path, header))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ConfigError(f"the manifest has no column {', '.join(missing)} (columns: "
                          f"{', '.join(columns) or 'none'})", path=str(path),
                          fix=f"name the columns {', '.join(REQUIRED)} (optional: "
                          f"{', '.join(OPTIONAL)})")
    base = path.resolve().parent
    entries: list[ManifestEntry] = []
    seen: dict[str, tuple[str, int]] = {}
    for line, raw in enumerate(reader, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        for column in REQUIRED:
            if not row.get(column):
                raise ConfigError(f"line {line}: empty {column}", path=str(path),
                                  fix="every row needs patient_id, image and tumour")
        pid = row["patient_id"]
        safe = sanitize_id(pid)
        if safe in seen:
            other, other_line = seen[safe]
            raise ConfigError(f"lines {other_line} and {line}: two rows for one patient "
                              f"({other!r}, {pid!r})", path=str(path),
                              fix="one row per patient; list several node files in one cell,"
                              f" separated by {NODE_SEPARATOR!r}")
        seen[safe] = (pid, line)
        nodes = tuple(str(base / p.strip()) for p in row.get("nodes", "").split(NODE_SEPARATOR)
                      if p.strip())
        entries.append(ManifestEntry(
            patient_id=pid, patient=safe, image=str(base / row["image"]),
            tumour=str(base / row["tumour"]), nodes=nodes,
            tumour_label=_label(row.get("tumour_label", ""), path, line), line=line))
    if not entries:
        raise ConfigError("the manifest lists no patient", path=str(path))
    return entries


def index_manifest(path: str | Path) -> list[dict]:
    """One index row per manifest patient: its files, the segment names of its named
    segmentations, and every problem found by reading headers only (fast)."""
    from mmfusion.images.masks import header_problems as mask_problems
    from mmfusion.images.volumes import header_problems as image_problems

    rows = []
    for entry in read_manifest(path):
        problems = image_problems(entry.image)
        names: list[str] = []
        for mask in dict.fromkeys(entry.masks):
            found, segment_names = mask_problems(mask)
            problems.extend(found)
            names.extend(segment_names)
        rows.append({"patient_id": entry.patient_id, "patient": entry.patient,
                     "image": entry.image, "tumour": entry.tumour, "nodes": list(entry.nodes),
                     "tumour_label": "" if entry.tumour_label is None else entry.tumour_label,
                     "segment_names": names, "problems": problems,
                     "manifest_dir": str(Path(path).resolve().parent)})
    return rows


def _relative(target: str, start: Path) -> str:
    try:
        return Path(os.path.relpath(target, start)).as_posix()
    except ValueError:  # another drive (Windows)
        return target


def write_manifest_index(rows: list[dict], path: str | Path) -> None:
    """Write the index TSV atomically; file paths relative to the manifest's folder, and that
    folder relative to the index's (no absolute path is written, as in the DICOM index)."""
    from mmfusion.io import atomic_path

    index_dir = Path(path).resolve().parent
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        for row in rows:
            base = Path(row["manifest_dir"])
            out = dict(row, image=_relative(row["image"], base),
                       tumour=_relative(row["tumour"], base),
                       nodes=json.dumps([_relative(p, base) for p in row["nodes"]]),
                       segment_names=json.dumps(row["segment_names"]),
                       problems=PROBLEM_SEPARATOR.join(
                           p.replace("\t", " ").replace("\n", " ") for p in row["problems"]),
                       manifest_dir=_relative(str(base), index_dir))
            writer.writerow([out[c] for c in INDEX_COLUMNS])


def read_manifest_index(path: str | Path) -> list[dict]:
    """Rows of a manifest index, paths absolute again; a missing file reads as no rows."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if set(INDEX_COLUMNS) - set(reader.fieldnames or []):
            raise ConfigError("not a manifest index", path=str(path),
                              fix="create it with `mmfusion index --manifest`")
        rows = []
        for row in reader:
            base = os.path.normpath(path.resolve().parent / row["manifest_dir"])
            row["manifest_dir"] = base
            row["image"] = os.path.normpath(os.path.join(base, row["image"]))
            row["tumour"] = os.path.normpath(os.path.join(base, row["tumour"]))
            row["nodes"] = [os.path.normpath(os.path.join(base, p))
                            for p in json.loads(row["nodes"] or "[]")]
            row["segment_names"] = json.loads(row["segment_names"] or "[]")
            row["tumour_label"] = int(row["tumour_label"]) if row["tumour_label"] else None
            row["problems"] = [p for p in row["problems"].split(PROBLEM_SEPARATOR) if p]
            rows.append(row)
    return rows


def entry_from_row(row: dict) -> ManifestEntry:
    """The manifest entry an index row describes."""
    return ManifestEntry(patient_id=row["patient_id"], patient=row["patient"],
                         image=row["image"], tumour=row["tumour"], nodes=tuple(row["nodes"]),
                         tumour_label=row["tumour_label"], line=0)


def patients_from_manifest_index(path: str | Path) -> list[str]:
    """Sanitised IDs of the manifest's patients, sorted (problems included: conversion
    records their exclusion)."""
    return sorted(row["patient"] for row in read_manifest_index(path))
