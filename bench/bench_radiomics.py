"""Benchmark: our per-patient radiomics job vs a bare PyRadiomics `execute()`.

Ours = `mmfusion.features.radiomics.run_radiomics` on a converted patient folder: builds the
extractor from the params YAML, reads the NIfTIs, resamples (IBSI way), extracts GTV-T and
GTV-N features, writes radiomics.tsv + provenance. Bare = one pre-built
`RadiomicsFeatureExtractor` (same params YAML, PyRadiomics' own resampling) calling
`execute(ct_path, mask_path)` for the tumour mask and for the node-union mask. The two
alternate (interleaved) so drift in machine load hits both; we report medians.

    python bench/bench_radiomics.py [--size demo|lung] [--repeats 15]

`--resampling pyradiomics` (default) makes our job do the same feature work as bare, so the
difference is our overhead (reading once, NIfTI label handling, writing row + provenance);
`--resampling ibsi` times the pipeline's default (IBSI resampling of the ROI box only).

`demo`: 96x96x48 CT at 3.5x3.5x5 mm (the demo cohort's geometry); `lung`: 512x512x134 at
0.98x0.98x3 mm (LUNG1-001's geometry), tumour radius 25 mm, two nodes.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

GEOMETRY = {"demo": ((96, 96, 48), (3.5, 3.5, 5.0)), "lung": ((512, 512, 134), (0.977, 0.977, 3.0))}


def make_patient(folder: Path, size, spacing, seed: int = 0) -> None:
    """A textured phantom CT with a tumour sphere and two node spheres (NIfTI)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (nz, ny, nx)), indexing="ij")
    ct = rng.normal(40, 20, (nz, ny, nx)).astype(np.float32)
    body = ((x - nx / 2) / (nx * 0.45)) ** 2 + ((y - ny / 2) / (ny * 0.4)) ** 2 <= 1
    ct[~body] = -1000

    def sphere(c, r_mm):
        axes = zip((x, y, z), c, spacing, strict=True)
        return sum(((a - ci) * s) ** 2 for a, ci, s in axes) <= r_mm**2

    centre = (nx * 0.45, ny * 0.5, nz * 0.5)
    tumour = sphere(centre, 25.0)
    ct[tumour] += rng.normal(60, 30, int(tumour.sum()))
    nodes = np.zeros(ct.shape, np.uint16)
    for label, (c, r) in enumerate([((nx * 0.6, ny * 0.4, nz * 0.55), 10.0),
                                    ((nx * 0.35, ny * 0.6, nz * 0.4), 7.0)], start=1):
        nodes[sphere(c, r)] = label
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("ct", np.round(ct).astype(np.int16)), ("gtv_t", tumour.astype(np.uint8)),
                      ("gtv_n", nodes), ("gtv_n_union", (nodes > 0).astype(np.uint8))):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(spacing)
        sitk.WriteImage(im, str(folder / f"{name}.nii.gz"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(GEOMETRY), default="demo")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--resampling", choices=["ibsi", "pyradiomics"], default="pyradiomics",
                        help="our job's resampling; `pyradiomics` does the same work as bare")
    args = parser.parse_args(argv)

    import radiomics
    from radiomics import featureextractor

    from mmfusion.features.radiomics import RadiomicsSettings, default_params_path, run_radiomics

    radiomics.setVerbosity(logging.ERROR)
    settings = RadiomicsSettings(resampling=args.resampling)
    bare = featureextractor.RadiomicsFeatureExtractor(str(default_params_path()))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "BENCH1"
        make_patient(d, *GEOMETRY[args.size])

        def ours() -> None:
            run_radiomics(d, settings)

        def plain() -> None:
            bare.execute(str(d / "ct.nii.gz"), str(d / "gtv_t.nii.gz"))
            bare.execute(str(d / "ct.nii.gz"), str(d / "gtv_n_union.nii.gz"))

        ours(), plain()  # warm-up (imports, caches)
        t_ours, t_bare = [], []
        for _ in range(args.repeats):
            for fn, store in ((ours, t_ours), (plain, t_bare)):
                t0 = time.perf_counter()
                fn()
                store.append(time.perf_counter() - t0)
    m_ours, m_bare = statistics.median(t_ours), statistics.median(t_bare)
    print(f"geometry {args.size}: {GEOMETRY[args.size]}, repeats {args.repeats} (interleaved), "
          f"our resampling: {args.resampling}")
    print(f"bare PyRadiomics execute() x2 : median {m_bare:.3f} s")
    print(f"mmfusion run_radiomics (job)  : median {m_ours:.3f} s")
    print(f"overhead: {100 * (m_ours - m_bare) / m_bare:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
