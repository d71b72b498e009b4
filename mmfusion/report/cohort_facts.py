"""Counts about the cohort for the model card and the front page, from the cohort stage's
files: `qc/exclusions.tsv` (counts by stage and reason), `cohort/table.tsv` (patients and
events) and `cohort/folds.tsv` (sample size and events per fold and split).

Nothing here returns a patient identifier or an absolute path: exclusion reasons are
reduced to their message (the `[patient ..., file ...]` prefix, the suggested fix, any path
and the patient's own ID are removed) so that reasons group and can be published.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

SPLITS = ("train", "val", "test")
_PREFIX = re.compile(r"^\s*\[[^\]]*\]\s*")  # MMFusionError's "[patient P, file F] "
_FIX = re.compile(r"\s*Potential fix:.*$", re.DOTALL)
# an absolute POSIX path (or ~/...), a Windows path, or a file URI
_PATH = re.compile(r"(?<![\w.])(?:file://)?(?:~|[A-Za-z]:)?[/\\][^\s:;,'\"()\[\]]+")


def _basename(match: re.Match[str]) -> str:
    text = match.group(0).rstrip("/\\")
    name = re.split(r"[/\\]", text)[-1]
    return name or "…"


def sanitise_reason(reason: str, patient_id: str = "") -> str:
    """The message of an exclusion reason, without patient IDs or absolute paths."""
    text = _FIX.sub("", _PREFIX.sub("", str(reason if isinstance(reason, str) else "")))
    text = _PATH.sub(_basename, text)
    if patient_id:
        text = text.replace(str(patient_id), "<patient>")
    text = " ".join(text.split())
    return text or "(no reason recorded)"


def exclusion_counts(exclusions_tsv: str | Path) -> pd.DataFrame:
    """Excluded patients by stage and (sanitised) reason: stage, reason, n (largest first)."""
    excl = pd.read_csv(exclusions_tsv, sep="\t", dtype=str, keep_default_na=False)
    if excl.empty:
        return pd.DataFrame(columns=["stage", "reason", "n"])
    excl["reason"] = [sanitise_reason(r, p) for r, p in zip(excl["reason"], excl["patient_id"],
                                                             strict=True)]
    counts = (excl.groupby(["stage", "reason"]).size().rename("n").reset_index()
              .sort_values(["n", "stage", "reason"], ascending=[False, True, True]))
    return counts.reset_index(drop=True)


def _labels(table_tsv: str | Path) -> pd.Series:
    table = pd.read_csv(table_tsv, sep="\t", usecols=["patient_id", "label"],
                        dtype={"patient_id": str})
    return table.set_index("patient_id")["label"].astype(int)


def cohort_counts(table_tsv: str | Path) -> dict[str, int]:
    """Included patients and events (label 1) in the cohort table."""
    labels = _labels(table_tsv)
    return {"n": int(len(labels)), "events": int(labels.sum())}


def fold_sizes(table_tsv: str | Path, folds_tsv: str | Path) -> pd.DataFrame:
    """Per fold: patients and events in each split (`{split}_n`, `{split}_events`)."""
    labels = _labels(table_tsv)
    folds = pd.read_csv(folds_tsv, sep="\t", dtype={"patient_id": str})
    folds["label"] = folds["patient_id"].map(labels)
    rows = []
    for fold, g in folds.groupby("fold", sort=True):
        row: dict[str, int] = {"fold": int(fold)}
        for split in SPLITS:
            s = g[g["split"] == split]
            row[f"{split}_n"] = len(s)
            row[f"{split}_events"] = int(s["label"].fillna(0).sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=["fold", *[f"{s}_{k}" for s in SPLITS
                                                  for k in ("n", "events")]])
