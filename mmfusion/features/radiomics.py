"""PyRadiomics features of the tumour (GTV-T) and the nodes (GTV-N), one row per patient.

Feature settings live in a PyRadiomics params YAML (`mmfusion/data/radiomics_params.yaml`
by default). Resampling can be done two ways (`radiomics.resampling` in config):

- `ibsi` (default): this module resamples image and ROI the IBSI way before PyRadiomics
  sees them — a grid aligned on the image centre, trilinear image (optionally rounded to
  integers, as IBSI asks for CT), trilinear ROI kept where it is >= 0.5 — using the
  `resampledPixelSpacing` of the params file. Only the ROI's bounding box (plus padding)
  is resampled.
- `pyradiomics`: PyRadiomics resamples itself (corner-aligned grid, nearest-neighbour ROI).

The IBSI way reproduces many more IBSI reference values (tests/test_radiomics_ibsi.py).

GTV-N: a patient can have several nodes; the row describes their union (every voxel of
`gtv_n > 0`) as one ROI, so shape features describe the whole nodal volume; plus
`gtvn_present` (0/1) and `gtvn_count`. `node_roi: largest` uses node 1 only. Patients
without nodes get missing values (NaN) for every `gtvn_*` feature and `gtvn_present = 0`.

Columns: `patient_id`, `{roi}_{imagetype}_{class}_{feature}` (roi in gtvt, gtvn),
`gtvn_present`, `gtvn_count`. PyRadiomics' `diagnostics_*` go to a provenance JSON beside
the table, never into it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from mmfusion.errors import ConfigError, MMFusionError
from mmfusion.io import atomic_path, write_text_atomic
from mmfusion.settings import check_choice, schema_defaults

log = logging.getLogger(__name__)

ROIS = ("gtvt", "gtvn")
RESAMPLING = ("ibsi", "pyradiomics")
NODE_ROI = ("union", "largest")
PROVENANCE_NAME = "radiomics_provenance.json"


def default_params_path() -> Path:
    """The params YAML shipped with the package."""
    return Path(str(resources.files("mmfusion") / "data" / "radiomics_params.yaml"))


@dataclass(frozen=True)
@schema_defaults("radiomics")
class RadiomicsSettings:
    """Settings of the radiomics stage (config section `radiomics`; defaults: the schema).

    Attributes:
        params: PyRadiomics params YAML; empty means the shipped default.
        resampling: `ibsi` (done here, see module docstring) or `pyradiomics`.
        round_intensities: round the resampled CT to integers (IBSI, `ibsi` mode only).
        node_roi: `union` of all nodes or the `largest` node only.
        pad_voxels: padding around the ROI bounding box kept for resampling (`ibsi`).
    """

    params: str
    resampling: str
    round_intensities: bool
    node_roi: str
    pad_voxels: int

    def __post_init__(self) -> None:
        check_choice("radiomics.resampling", self.resampling, RESAMPLING)
        check_choice("radiomics.node_roi", self.node_roi, NODE_ROI)


    @property
    def params_path(self) -> Path:
        return Path(self.params) if self.params else default_params_path()


def load_params(path: str | Path) -> dict[str, Any]:
    """Read a PyRadiomics params YAML (dict with `setting`, `imageType`, `featureClass`)."""
    p = Path(path)
    try:
        params = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read radiomics params: {err}", path=str(p)) from err
    if not isinstance(params, dict):
        raise ConfigError("radiomics params must be a mapping", path=str(p))
    return params


class Extractor:
    """A configured PyRadiomics extractor plus the resampling this module adds.

    Build once, call `features(ct, mask)` per ROI.
    """

    def __init__(self, settings: RadiomicsSettings) -> None:
        import radiomics
        from radiomics import featureextractor

        radiomics.setVerbosity(logging.ERROR)  # PyRadiomics' own logger only
        self.settings = settings
        self.params = load_params(settings.params_path)
        params = json.loads(json.dumps(self.params))  # deep copy
        setting = params.setdefault("setting", {}) or {}
        params["setting"] = setting
        self.spacing: tuple[float, ...] | None = None
        if settings.resampling == "ibsi" and setting.get("resampledPixelSpacing"):
            self.spacing = tuple(float(v) for v in setting.pop("resampledPixelSpacing"))
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                raise ConfigError("resampledPixelSpacing must be three positive numbers",
                                  path=str(settings.params_path))
        self.label = int(setting.get("label", 1))
        try:
            self.extractor = featureextractor.RadiomicsFeatureExtractor(params)
        except Exception as err:  # PyRadiomics validates with pykwalify
            raise ConfigError(f"invalid PyRadiomics params: {err}",
                              path=str(settings.params_path)) from err

    def prepare(self, ct: sitk.Image, mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
        """IBSI resampling of the ROI region (identity when no spacing is set)."""
        mask = sitk.Cast(mask, sitk.sitkUInt8)
        if self.spacing is None:
            # no crop here: PyRadiomics aligns its resampling grid on the image it gets
            return ct, mask
        return ibsi_resample(ct, mask, self.spacing, self.settings.pad_voxels,
                             round_intensities=self.settings.round_intensities,
                             label=self.label)

    def features(self, ct: sitk.Image, mask: sitk.Image) -> tuple[dict[str, float], dict]:
        """Features and diagnostics of one ROI (`mask == label`)."""
        image, roi = self.prepare(ct, mask)
        result = self.extractor.execute(image, roi, label=self.label)
        feats: dict[str, float] = {}
        diag: dict[str, Any] = {}
        for key, value in result.items():
            if key.startswith("diagnostics_"):
                diag[key] = _jsonable(value)
            else:
                feats[key] = feature_value(key, value)
        return feats, diag


def ibsi_resample(
    image: sitk.Image,
    mask: sitk.Image,
    spacing: tuple[float, ...],
    pad_voxels: int = 3,
    *,
    round_intensities: bool = True,
    label: int = 1,
) -> tuple[sitk.Image, sitk.Image]:
    """Resample image and ROI onto an IBSI grid, only around the ROI.

    The full IBSI grid keeps the image centre: n' = ceil(n s / s'), origin shifted by
    (s (n - 1) - s' (n' - 1)) / 2 along each axis. The returned images are the part of
    that grid covering the ROI's bounding box plus `pad_voxels`.
    """
    so = np.array(image.GetSpacing(), float)
    n = np.array(image.GetSize(), float)
    sp = np.array(spacing, float)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    n_new = np.ceil(n * so / sp).astype(int)
    shift = (so * (n - 1) - sp * (n_new - 1)) / 2
    origin = np.array(image.GetOrigin(), float) + direction @ shift

    arr = sitk.GetArrayViewFromImage(mask) == label
    idx = np.argwhere(arr)
    if idx.size == 0:
        raise ValueError("empty ROI")
    lo_xyz, hi_xyz = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]
    # old-grid index -> new-grid continuous index (same direction): (o + D s i - o') / s'
    def to_new(i_old):
        return (np.array(image.GetOrigin()) + direction @ (so * i_old) - origin)
    corners = np.array([direction.T @ to_new(np.array(c, float)) / sp for c in
                        [(x, y, z) for x in (lo_xyz[0] - 1, hi_xyz[0] + 1)
                         for y in (lo_xyz[1] - 1, hi_xyz[1] + 1)
                         for z in (lo_xyz[2] - 1, hi_xyz[2] + 1)]])
    start = np.maximum(np.floor(corners.min(axis=0)).astype(int) - pad_voxels, 0)
    stop = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + pad_voxels, n_new - 1)
    size = (stop - start + 1).astype(int)
    ref = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    ref.SetSpacing(sp.tolist())
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin((origin + direction @ (sp * start)).tolist())
    low = float(sitk.GetArrayViewFromImage(image).min())
    img = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(),
                        sitk.sitkLinear, low, sitk.sitkFloat32)
    if round_intensities:
        img = sitk.Round(img)
    m = sitk.Resample(sitk.Cast(mask == label, sitk.sitkFloat32), ref, sitk.Transform(),
                      sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    roi = sitk.Cast(m >= 0.5, sitk.sitkUInt8) * label
    return img, sitk.Cast(roi, sitk.sitkUInt8)


def feature_value(key: str, value: Any) -> float:
    """A PyRadiomics feature as a float. With numpy 2, PyRadiomics' shape features (axis
    lengths, elongation, flatness: square roots of covariance eigenvalues) come back as
    complex numbers with a zero imaginary part; that part is dropped. A feature with a real
    imaginary part is NaN, with a warning (never silently its real part)."""
    if np.iscomplexobj(value):
        z = complex(np.asarray(value).item())
        if abs(z.imag) > 1e-9 * max(1.0, abs(z.real)):
            log.warning("radiomics feature %s is complex (%r): recorded as NaN", key, z)
            return math.nan
        return float(z.real)
    return float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def extract_patient(
    ct: sitk.Image,
    gtv_t: sitk.Image,
    gtv_n: sitk.Image,
    extractor: Extractor,
    *,
    patient: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One patient's feature row and provenance (diagnostics per ROI, warnings).

    Returns:
        (row, provenance): row maps column name -> value (see module docstring).
    """
    t_mask = sitk.Cast(gtv_t > 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(t_mask).any():
        raise MMFusionError("the tumour mask (gtv_t) is empty", patient=patient,
                            fix="check that the tumour ROI pattern matches a non-empty contour")
    try:
        t_feats, t_diag = extractor.features(ct, t_mask)
    except (ValueError, RuntimeError) as err:
        raise MMFusionError(f"PyRadiomics failed on GTV-T: {err}", patient=patient,
                            fix="check the tumour contour (too small after resampling?)") from err
    row: dict[str, Any] = {"patient_id": patient}
    row.update({f"gtvt_{k}": v for k, v in t_feats.items()})
    prov: dict[str, Any] = {"gtvt": t_diag, "gtvn": None, "warnings": []}

    counts = np.bincount(sitk.GetArrayViewFromImage(gtv_n).ravel())
    labels = [int(v) for v in np.flatnonzero(counts) if v > 0]
    n_feats: dict[str, float] | None = None
    if labels:
        if extractor.settings.node_roi == "largest":
            n_mask = sitk.Cast(gtv_n == 1, sitk.sitkUInt8)
        else:
            n_mask = sitk.Cast(gtv_n > 0, sitk.sitkUInt8)
        try:
            n_feats, prov["gtvn"] = extractor.features(ct, n_mask)
        except (ValueError, RuntimeError) as err:
            msg = f"PyRadiomics failed on GTV-N ({err}); node features left missing"
            log.warning("patient %s: %s", patient, msg)
            prov["warnings"].append(msg)
    for key in t_feats:
        row[f"gtvn_{key}"] = n_feats[key] if n_feats is not None else math.nan
    row["gtvn_present"] = int(bool(labels))
    row["gtvn_count"] = len(labels)
    return row, prov


def write_row(row: Mapping[str, Any], path: str | Path) -> None:
    """Write one feature row as a two-line TSV (header, values), atomically."""
    cols = list(row)
    values = ["" if isinstance(v, float) and math.isnan(v) else
              (repr(v) if isinstance(v, float) else str(v)) for v in row.values()]
    write_text_atomic(path, "\t".join(cols) + "\n" + "\t".join(values) + "\n")


def run_radiomics(
    patient_dir: str | Path, settings: RadiomicsSettings, extractor: Extractor | None = None
) -> dict[str, Any]:
    """Extract features of one converted patient folder; write `radiomics.tsv` + provenance."""
    from mmfusion.features.converted import read_converted

    d = Path(patient_dir)
    extractor = extractor or Extractor(settings)
    ct, gtv_t, gtv_n = read_converted(d)
    row, prov = extract_patient(ct, gtv_t, gtv_n, extractor, patient=d.name)
    prov.update(provenance_header(settings, extractor))
    # relative to the patient folder: outputs record no absolute path
    prov["sources"] = {n: n for n in ("ct.nii.gz", "gtv_t.nii.gz", "gtv_n.nii.gz")}
    with atomic_path(d / PROVENANCE_NAME) as tmp:
        tmp.write_text(json.dumps(prov, indent=1, sort_keys=True, default=str))
    write_row(row, d / "radiomics.tsv")
    return row


def provenance_header(settings: RadiomicsSettings, extractor: Extractor) -> dict[str, Any]:
    """Settings and versions actually used (written next to every output)."""
    import radiomics

    text = settings.params_path.read_bytes()
    return {
        "settings": dataclasses.asdict(settings),
        "params_file": settings.params or "mmfusion/data/radiomics_params.yaml",  # as given
        "params_sha256": hashlib.sha256(text).hexdigest(),
        "params": extractor.params,
        "versions": {"pyradiomics": radiomics.__version__,
                     "SimpleITK": sitk.Version_VersionString(), "numpy": np.__version__},
    }
