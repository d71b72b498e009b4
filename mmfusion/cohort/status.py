"""Reading the convert stage's per-patient `convert_status.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmfusion.errors import MMFusionError

STATUSES = ("ok", "excluded")


def read_convert_status(path: str | Path) -> dict[str, Any]:
    """Parse and check a `convert_status.json` (keys patient_id, status, reason, warnings)."""
    p = Path(path)
    try:
        status = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MMFusionError(f"cannot read convert status: {err}", path=str(p),
                            fix="re-run `mmfusion convert` for this patient") from err
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        raise MMFusionError(f"convert status must have status in {STATUSES}", path=str(p),
                            fix="re-run `mmfusion convert` for this patient")
    status.setdefault("patient_id", p.parent.name)
    status.setdefault("reason", "")
    status.setdefault("warnings", [])
    return status


def require_converted(patient_dir: str | Path) -> dict[str, Any]:
    """Status of a patient folder that must have been converted successfully."""
    d = Path(patient_dir)
    status = read_convert_status(d / "convert_status.json")
    if status["status"] != "ok":
        raise MMFusionError(
            f"patient was excluded at conversion ({status['reason']}); nothing to do",
            patient=d.name,
            fix="downstream rules request only patients with status ok",
        )
    return status


def patient_folder(path: str | Path) -> Path:
    """The patient folder given either the folder or its `convert_status.json`."""
    p = Path(path)
    return p.parent if p.name == "convert_status.json" else p


SUMMARY_COLUMNS = ("patient_id", "status", "reason", "n_warnings")


def write_convert_summary(status_paths: list[str | Path], out: str | Path) -> int:
    """One TSV row per patient's conversion outcome; returns the number converted ok.

    Snakemake reads this one file (a checkpoint) to decide which patients go on to crop
    and radiomics, instead of waiting on one checkpoint per patient.
    """
    import csv

    from mmfusion.io import atomic_path

    rows = []
    for path in sorted(status_paths, key=lambda p: Path(p).parent.name):
        st = read_convert_status(path)
        rows.append({"patient_id": Path(path).parent.name, "status": st["status"],
                     "reason": " ".join(str(st["reason"]).split()),
                     "n_warnings": len(st["warnings"])})
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, delimiter="\t",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return sum(r["status"] == "ok" for r in rows)


def read_converted_ok(summary: str | Path) -> list[str]:
    """Patients whose conversion succeeded, from the summary TSV."""
    import csv

    with open(summary, newline="") as fh:
        return [r["patient_id"] for r in csv.DictReader(fh, delimiter="\t")
                if r["status"] == "ok"]
