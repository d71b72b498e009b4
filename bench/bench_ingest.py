"""Benchmark `mmfusion convert` against `plastimatch convert` on one patient (not a test).

Both write the CT as NIfTI plus masks of the same ROIs: plastimatch rasterises every ROI
of the RTSTRUCT; ours is given the tumour ROI and every other ROI as node ROIs (so it
rasterises the same ROIs and also builds the node label map). Runs are interleaved
(ours, plastimatch, plastimatch, ours, ...) to share the machine's load fairly. Wall time
and peak resident memory come from os.wait4 on each child process.

    python bench/bench_ingest.py [--case DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASE = REPO.parent / "shared" / "data" / "nsclc-radiomics-lung1-001" / "LUNG1-001"


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE,
                        help="patient folder holding the CT series and one RTSTRUCT")
    parser.add_argument("--tumour-roi", default="GTV-1")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    plastimatch = shutil.which("plastimatch")
    if plastimatch is None:
        sys.exit("plastimatch is not installed (apt-get install plastimatch)")
    sys.path.insert(0, str(REPO))
    from mmfusion.dicom.index import index_dicom

    rows = index_dicom(args.case, progress=False)
    structs = [r for r in rows if r["modality"] == "RTSTRUCT"]
    others = [n for n in structs[0]["roi_names"] if n != args.tumour_roi]
    node_regex = "|".join(_escape(n) for n in others) or "(?!)"
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp = Path(tmp)
        flat = tmp / "flat"  # plastimatch reads one flat folder
        flat.mkdir()
        for i, row in enumerate(r for r in rows if r["modality"] in ("CT", "RTSTRUCT")):
            for f in row["files"]:
                os.symlink(Path(row["dicom_root"]) / f, flat / f"{i}_{Path(f).name}")
        ours_cmd = [sys.executable, "-m", "mmfusion", "convert", str(args.case), "--out",
                    str(tmp / "ours"), "--tumour-roi", _escape(args.tumour_roi),
                    "--node-roi", node_regex]
        theirs_cmd = [plastimatch, "convert", "--input", str(flat), "--output-img",
                      str(tmp / "pl" / "ct.nii.gz"), "--output-prefix", str(tmp / "pl" / "masks"),
                      "--prefix-format", "nii.gz"]
        env_note = f"{os.cpu_count()} CPUs"
        print(f"case {args.case} ({env_note}); ROIs: {args.tumour_roi} + {', '.join(others)}")
        ours, theirs = [], []
        for i in range(args.repeats):
            order = [("ours", ours_cmd), ("plastimatch", theirs_cmd)]
            for name, cmd in order if i % 2 == 0 else order[::-1]:
                wall, rss = run_measured(cmd)
                (ours if name == "ours" else theirs).append((wall, rss))
                print(f"  run {i + 1} {name:12s} {wall:7.2f} s  {rss:7.1f} MiB", flush=True)
    ow = statistics.median(w for w, _ in ours)
    tw = statistics.median(w for w, _ in theirs)
    om = max(m for _, m in ours)
    tm = max(m for _, m in theirs)
    print(f"median wall: mmfusion {ow:.2f} s, plastimatch {tw:.2f} s, ratio {ow / tw:.2f}x")
    print(f"peak RSS:    mmfusion {om:.0f} MiB, plastimatch {tm:.0f} MiB, ratio {om / tm:.2f}x")


def _escape(name: str) -> str:
    import re

    return re.escape(name)


if __name__ == "__main__":
    main()
