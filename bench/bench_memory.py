"""Peak memory (and wall time) of the per-patient stages on a clinical-size CT (not a test).

Writes one synthetic patient at 512 x 512 x 300 (0.8 mm pixels, 2 mm slices: a typical
planning CT), then runs `mmfusion convert`, `crop` and `radiomics` on it as the workflow
does, each in its own process, and reports wall time and peak resident memory (os.wait4).
The rules' `mem_mb` (mmfusion/workflow/resources.py) are set from these figures with
headroom. Crop and radiomics run with the schema's defaults (the paper's 1 mm patches).

    python bench/bench_memory.py [--matrix 512] [--slices 300] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    py = [sys.executable, "-m", "mmfusion"]
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        root = Path(tmp)
        spacing = max(0.8, 410.0 / args.matrix)
        subprocess.run([*py, "synth", "--out", str(root / "cohort"), "--n-patients", "1",
                        "--matrix", str(args.matrix), "--n-slices", str(args.slices),
                        "--pixel-spacing", f"{spacing:.3f}", "--slice-thickness", "2.0",
                        "--seed", "5", "--jobs", "1", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
        patient_dicom = next((root / "cohort" / "dicom").iterdir())
        out = root / "patient"
        stages = {
            "convert": [*py, "convert", str(patient_dicom), "--out", str(out),
                        "--status-out", str(out / "convert_status.json")],
            "crop": [*py, "crop", str(out), "--settings", "{}"],
            "radiomics": [*py, "radiomics", str(out), "--settings", "{}"],
        }
        rows = []
        for name, cmd in stages.items():
            runs = [run_measured(cmd) for _ in range(args.repeats)]
            wall = min(w for w, _ in runs)
            peak = max(m for _, m in runs)
            rows.append({"stage": name, "wall_s": round(wall, 1), "peak_rss_mib": round(peak)})
        ct_mib = args.matrix * args.matrix * args.slices * 2 / 2 ** 20
        print(f"CT {args.matrix}x{args.matrix}x{args.slices} ({ct_mib:.0f} MiB as int16), "
              f"best of {args.repeats}")
        print(f"{'stage':<10} {'wall s':>7} {'peak RSS MiB':>13}")
        for row in rows:
            print(f"{row['stage']:<10} {row['wall_s']:>7} {row['peak_rss_mib']:>13}")
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
