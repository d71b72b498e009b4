"""Radiomics stage: row layout, absent nodes, provenance, settings, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from mmfusion.errors import ConfigError, MMFusionError
from mmfusion.features.radiomics import (
    Extractor,
    RadiomicsSettings,
    extract_patient,
    ibsi_resample,
    run_radiomics,
)
from tests.test_crop import make_volume


@pytest.fixture(scope="module")
def extractor():
    return Extractor(RadiomicsSettings())


def test_row_columns(extractor):
    ct, t, n, _ = make_volume(n_nodes=2)
    row, prov = extract_patient(ct, t, n, extractor, patient="P1")
    cols = list(row)
    assert cols[0] == "patient_id" and cols[-2:] == ["gtvn_present", "gtvn_count"]
    feats = cols[1:-2]
    assert all(c.split("_")[0] in ("gtvt", "gtvn") for c in feats)
    assert all(len(c.split("_", 3)) == 4 for c in feats)  # roi_imagetype_class_feature
    assert not any("diagnostics" in c for c in cols)
    t_cols = [c[5:] for c in feats if c.startswith("gtvt_")]
    n_cols = [c[5:] for c in feats if c.startswith("gtvn_")]
    assert t_cols == n_cols and len(t_cols) > 90
    assert row["gtvn_present"] == 1 and row["gtvn_count"] == 2
    assert "diagnostics_Mask-original_VoxelNum" in prov["gtvt"]


def test_union_vs_largest_node():
    ct, t, n, _ = make_volume(n_nodes=2)
    union, _ = extract_patient(ct, t, n, Extractor(RadiomicsSettings()), patient="P")
    largest, _ = extract_patient(ct, t, n, Extractor(RadiomicsSettings(node_roi="largest")),
                                 patient="P")
    v_u, v_l = (r["gtvn_original_shape_VoxelVolume"] for r in (union, largest))
    assert v_u > v_l > 0
    assert union["gtvt_original_shape_VoxelVolume"] == largest["gtvt_original_shape_VoxelVolume"]


def test_absent_nodes_are_missing_with_flag(extractor):
    ct, t, n, _ = make_volume(n_nodes=0)
    row, prov = extract_patient(ct, t, n, extractor, patient="P0")
    assert row["gtvn_present"] == 0 and row["gtvn_count"] == 0
    node_values = [v for k, v in row.items() if k.startswith("gtvn_original")]
    assert node_values and all(math.isnan(v) for v in node_values)
    assert prov["gtvn"] is None


def test_empty_tumour_is_an_error(extractor):
    ct, t, n, _ = make_volume()
    with pytest.raises(MMFusionError, match="empty"):
        extract_patient(ct, t * 0, n, extractor, patient="P1")


def test_ibsi_resample_keeps_global_grid():
    """Cropped IBSI resampling equals resampling the whole image, on the overlap."""
    ct, t, _, _ = make_volume()
    img, roi = ibsi_resample(ct, t, (2.0, 2.0, 2.0), pad_voxels=1)
    full_img, full_roi = ibsi_resample(ct, sitk.Image(t) * 0 + 1, (2.0, 2.0, 2.0), pad_voxels=0)
    idx = full_img.TransformPhysicalPointToIndex(img.GetOrigin())
    np.testing.assert_allclose(full_img.TransformIndexToPhysicalPoint(idx), img.GetOrigin(),
                               atol=1e-6)
    a = sitk.GetArrayFromImage(img)
    b = sitk.GetArrayFromImage(full_img)[idx[2]:idx[2] + a.shape[0], idx[1]:idx[1] + a.shape[1],
                                          idx[0]:idx[0] + a.shape[2]]
    np.testing.assert_array_equal(a, b)
    assert sitk.GetArrayViewFromImage(roi).sum() > 0


def test_settings_validation(tmp_path):
    with pytest.raises(ConfigError, match="unknown radiomics"):
        RadiomicsSettings.from_config({"bin_width": 25})
    with pytest.raises(ConfigError, match="resampling must be one of.*got 'nearest'"):
        RadiomicsSettings(resampling="nearest")
    bad = tmp_path / "p.yaml"
    bad.write_text("setting: {binWidth: -}\nfoo: [\n")
    with pytest.raises(ConfigError, match=r"p\.yaml\] cannot read radiomics params"):
        Extractor(RadiomicsSettings(params=str(bad)))


def test_run_and_cli(tmp_path):
    from mmfusion.cli import main

    d = tmp_path / "P3"
    make_volume(d, n_nodes=1)
    assert main(["radiomics", str(d), "--settings", json.dumps({"node_roi": "union"})]) == 0
    table = pd.read_csv(d / "radiomics.tsv", sep="\t")
    assert table.shape[0] == 1 and table.loc[0, "patient_id"] == "P3"
    assert table.loc[0, "gtvn_present"] == 1
    prov = json.loads((d / "radiomics_provenance.json").read_text())
    assert prov["settings"]["resampling"] == "ibsi" and len(prov["params_sha256"]) == 64
    assert "pyradiomics" in prov["versions"]
    d0 = tmp_path / "P4"
    make_volume(d0, n_nodes=0)
    row = run_radiomics(d0, RadiomicsSettings())
    table0 = pd.read_csv(d0 / "radiomics.tsv", sep="\t")
    assert list(table0.columns) == list(row) == list(table.columns)
    assert table0.filter(like="gtvn_original").isna().all(axis=None)


def test_feature_values_come_back_real(caplog) -> None:
    """numpy 2 gives PyRadiomics' shape features as complex numbers with zero imaginary
    part: kept as their real value; a real imaginary part is NaN with a warning."""
    import logging
    import math

    import numpy as np

    from mmfusion.features.radiomics import feature_value

    assert feature_value("a", np.float64(2.5)) == 2.5
    assert feature_value("shape_Elongation", np.complex128(0.9574851 + 0j)) == 0.9574851
    assert feature_value("b", np.array(3 + 0j)) == 3.0
    with caplog.at_level(logging.WARNING, logger="mmfusion.features.radiomics"):
        assert math.isnan(feature_value("shape_Flatness", np.complex128(0.5 + 0.2j)))
    assert "shape_Flatness is complex" in caplog.text
