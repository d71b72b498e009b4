"""The convert stage's volumes as the features stage reads them (crop and radiomics)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from mmfusion.errors import MMFusionError

VOLUMES = ("ct.nii.gz", "gtv_t.nii.gz", "gtv_n.nii.gz")


def read_converted(patient_dir: str | Path) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Read ct, gtv_t and gtv_n NIfTIs from a converted patient folder."""
    d = Path(patient_dir)
    paths = [d / name for name in VOLUMES]
    for p in paths:
        if not p.is_file():
            raise MMFusionError(
                "converted volume missing", patient=d.name, path=str(p),
                fix="run `mmfusion convert` for this patient first",
            )
    return tuple(sitk.ReadImage(str(p)) for p in paths)  # type: ignore[return-value]
