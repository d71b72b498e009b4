"""Compare two workflow results folders: the same config and seed run two ways (e.g. through
SLURM and locally) must give identical models' numbers.

Compared: every `models/{variant}/fold{k}/predictions.csv` and `val_predictions.csv` byte for
byte, and in each `metrics.json` what the model computed (threshold, temperature,
recalibration, test and validation metrics, best epoch); not what depends on the machine
(epoch seconds, data-wait share, device). Also `report/metrics_summary.csv`.

    python workflow/scripts/compare_results.py RESULTS_A RESULTS_B   # exit 1 on a difference
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# metrics.json keys that describe the machine or the run's timing, not the model
MACHINE_KEYS = frozenset({"device", "mean_epoch_seconds", "mean_data_wait_share"})
BYTE_FILES = ("predictions.csv", "val_predictions.csv")


def _model_metrics(path: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in MACHINE_KEYS}


def compare_results(a: str | Path, b: str | Path) -> tuple[int, list[str]]:
    """(number of fold folders compared, differences as one line each). A fold folder that
    exists on one side only is a difference; no fold folder at all is one too."""
    a, b = Path(a), Path(b)
    folds_a = {p.relative_to(a) for p in a.glob("models/*/fold*") if p.is_dir()}
    folds_b = {p.relative_to(b) for p in b.glob("models/*/fold*") if p.is_dir()}
    diffs = [f"only in {a}: {p}" for p in sorted(folds_a - folds_b)]
    diffs += [f"only in {b}: {p}" for p in sorted(folds_b - folds_a)]
    common = sorted(folds_a & folds_b)
    if not common:
        diffs.append("no models/*/fold* folder to compare")
    for rel in common:
        for name in BYTE_FILES:
            fa, fb = a / rel / name, b / rel / name
            if fa.is_file() != fb.is_file():
                diffs.append(f"{rel}/{name}: present on one side only")
            elif fa.is_file() and fa.read_bytes() != fb.read_bytes():
                diffs.append(f"{rel}/{name}: contents differ")
        ma, mb = a / rel / "metrics.json", b / rel / "metrics.json"
        if not (ma.is_file() and mb.is_file()):
            diffs.append(f"{rel}/metrics.json: missing")
            continue
        da, db = _model_metrics(ma), _model_metrics(mb)
        for key in sorted(set(da) | set(db)):
            if da.get(key) != db.get(key):
                diffs.append(f"{rel}/metrics.json: {key} differs ({da.get(key)!r} vs "
                             f"{db.get(key)!r})"[:300])
    sa, sb = a / "report" / "metrics_summary.csv", b / "report" / "metrics_summary.csv"
    if sa.is_file() and sb.is_file() and sa.read_bytes() != sb.read_bytes():
        diffs.append("report/metrics_summary.csv: contents differ")
    return len(common), diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    n, diffs = compare_results(args.a, args.b)
    for line in diffs:
        print(f"DIFFERENT: {line}")
    print(f"compared {n} fold folders: " + ("identical" if not diffs else
                                              f"{len(diffs)} difference(s)"))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
