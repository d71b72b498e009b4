"""In-fold preprocessing: fitted on training rows only, shapes, selection, encoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmfusion.cohort.folds import FoldSettings, make_folds
from mmfusion.cohort.preprocess import GROUPS, FoldPreprocessor, PreprocessSettings, fold_frames
from mmfusion.errors import ConfigError

N_T, N_N = 60, 30


def make_table(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    df = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "label": y})
    df["age"] = rng.normal(60, 8, n)
    df["kps"] = rng.choice([70.0, 80.0, 90.0, np.nan], n)
    df["sex"] = rng.choice(["M", "F", None], n, p=[0.6, 0.35, 0.05])
    df["t_stage"] = rng.choice(["T1", "T2", "T3", "T4"], n)
    df["wbc"] = rng.normal(6, 1, n)
    df.loc[df.index[:5], "wbc"] = np.nan
    for j in range(N_T):
        signal = y * (2.0 if j < 4 else 0.0) * (10 ** (j % 4))
        df[f"gtvt_original_x_f{j}"] = rng.normal(0, 1, n) * (10 ** (j % 4)) + signal
    df["gtvt_original_x_dup0"] = df["gtvt_original_x_f0"] * 3 + 1  # perfectly correlated
    df["gtvt_original_x_const"] = 5.0
    present = rng.random(n) < 0.8
    for j in range(N_N):
        col = rng.normal(0, 1, n) + y * (1.5 if j < 3 else 0.0)
        df[f"gtvn_original_x_f{j}"] = np.where(present, col, np.nan)
    df["gtvn_present"] = present.astype(int)
    return df


SPEC = {
    "label_column": "label",
    "groups": {
        "clinical": {"numeric": ["age", "kps"],
                     "categorical": {"sex": ["M", "F"], "t_stage": ["T1", "T2", "T3", "T4"]}},
        "hematology": {"numeric": ["wbc"], "categorical": {}},
        "radiomics_tumour": [*(f"gtvt_original_x_f{j}" for j in range(N_T)),
                             "gtvt_original_x_dup0", "gtvt_original_x_const"],
        "radiomics_node": [f"gtvn_original_x_f{j}" for j in range(N_N)],
    },
    "flags": {"radiomics_node": ["gtvn_present"]},
}


def fitted_state(prep):
    return {k: v for k, v in vars(prep).items() if k.endswith("_")}


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, dict):
            assert va.keys() == vb.keys(), key
            for g in va:
                if isinstance(va[g], np.ndarray):
                    np.testing.assert_array_equal(va[g], vb[g], err_msg=f"{key}[{g}]")
                else:
                    assert va[g] == vb[g], (key, g)
        else:
            assert va == vb, key


@pytest.mark.parametrize("selection", ["mrmr", "l1"])
def test_changing_test_rows_leaves_fitted_parameters_unchanged(selection):
    table = make_table()
    folds = make_folds(table["patient_id"].tolist(), table["label"].to_numpy(), FoldSettings())
    settings = PreprocessSettings(selection=selection, n_tumour=8, n_node=5)
    frames = fold_frames(table, folds, 0)
    prep = FoldPreprocessor(SPEC, settings).fit(frames["train"])
    before = fitted_state(prep)
    train_out = prep.transform(frames["train"])

    # change every non-training row of the fold: features, labels, missingness
    rng = np.random.default_rng(99)
    other = ~table["patient_id"].isin(frames["train"]["patient_id"])
    num_cols = [c for c in table.columns
                if c.startswith(("gtvt_", "gtvn_original", "age", "kps", "wbc"))]
    changed = table.copy().astype({c: float for c in num_cols})
    changed.loc[other, num_cols] = rng.normal(0, 1000, (int(other.sum()), len(num_cols)))
    changed.loc[other, "label"] = 1 - changed.loc[other, "label"]
    changed.loc[other, "sex"] = None
    frames2 = fold_frames(changed, folds, 0)
    pd.testing.assert_frame_equal(frames["train"], frames2["train"])
    prep2 = FoldPreprocessor(SPEC, settings).fit(frames2["train"])
    assert_state_equal(before, fitted_state(prep2))
    for g in GROUPS:
        np.testing.assert_array_equal(train_out[g], prep2.transform(frames2["train"])[g])
    # and a test row's output depends only on that row
    one = prep.transform(frames["test"].iloc[[3]])
    for g in GROUPS:
        np.testing.assert_array_equal(one[g][0], prep.transform(frames["test"])[g][3])


def test_output_shapes_and_values():
    table = make_table()
    prep = FoldPreprocessor(SPEC, {"n_tumour": 10, "n_node": 6}).fit(table)
    out = prep.transform(table)
    assert set(out) == set(GROUPS)
    assert out["clinical"].shape == (90, 2 + 2 + 4)
    assert out["hematology"].shape == (90, 1)
    assert out["radiomics_tumour"].shape == (90, 10)
    assert out["radiomics_node"].shape == (90, 6 + 1)
    for g, arr in out.items():
        assert arr.dtype == np.float32 and np.isfinite(arr).all(), g
        assert arr.shape[1] == prep.n_features_out_[g] == len(prep.feature_names_out_[g])
    names = prep.feature_names_out_["clinical"]
    assert names[2:4] == ["sex=M", "sex=F"]
    missing_sex = table["sex"].isna().to_numpy()
    assert (out["clinical"][missing_sex, 2:4] == 0).all()
    assert (out["clinical"][~missing_sex, 2:4].sum(axis=1) == 1).all()
    assert prep.feature_names_out_["radiomics_node"][-1] == "gtvn_present"
    np.testing.assert_array_equal(out["radiomics_node"][:, -1], table["gtvn_present"])
    np.testing.assert_allclose(out["clinical"][:, 0].mean(), 0, atol=1e-5)


@pytest.mark.parametrize("selection", ["mrmr", "l1"])
def test_selection_filters_and_finds_signal(selection):
    table = make_table(n=150, seed=3)
    prep = FoldPreprocessor(SPEC, PreprocessSettings(selection=selection, n_tumour=6,
                                                     n_node=4)).fit(table)
    tumour = prep.columns_["radiomics_tumour"]
    assert len(tumour) == 6 and "gtvt_original_x_const" not in tumour
    assert not {"gtvt_original_x_f0", "gtvt_original_x_dup0"} <= set(tumour)  # correlation
    informative = {f"gtvt_original_x_f{j}" for j in range(4)} | {"gtvt_original_x_dup0"}
    assert len(informative & set(tumour)) >= 3
    node = prep.columns_["radiomics_node"]
    assert len(node) == 4
    assert len({f"gtvn_original_x_f{j}" for j in range(3)} & set(node)) >= 2


def test_fewer_features_than_requested_and_settings():
    table = make_table()
    prep = FoldPreprocessor(SPEC, {"n_tumour": 500, "n_node": 500}).fit(table)
    assert 0 < len(prep.columns_["radiomics_tumour"]) <= N_T
    with pytest.raises(ConfigError, match=r"unknown preprocess setting\(s\): \['n_features'\]"):
        PreprocessSettings.from_config({"n_features": 3})
    with pytest.raises(ConfigError, match="selection must be one of.*got 'lasso'"):
        PreprocessSettings(selection="lasso")
    with pytest.raises(RuntimeError, match="transform called before fit"):
        FoldPreprocessor(SPEC).transform(table)


def test_log_transform_of_skewed_positive_columns():
    rng = np.random.default_rng(3)
    n = 120
    df = make_table(n, seed=3)
    df["wbc"] = np.exp(rng.normal(1.0, 0.8, n))  # positive, right-skewed: logged
    df["age"] = rng.normal(60, 8, n) - 100  # negative values: never logged
    train, test = df.iloc[:90].reset_index(drop=True), df.iloc[90:].reset_index(drop=True)
    settings = PreprocessSettings(n_tumour=4, n_node=3, log_skew=1.0)
    prep = FoldPreprocessor(SPEC, settings).fit(train)
    assert not np.isnan(prep.log_floor_["hematology"]).any()
    assert np.isnan(prep.log_floor_["clinical"]).all()
    out = prep.transform(train)["hematology"][:, 0]
    logged = np.log(train["wbc"].to_numpy())
    np.testing.assert_allclose(out, (logged - logged.mean()) / logged.std(), atol=1e-5)
    # unseen values at or below zero stay finite (floored at half the training minimum)
    test.loc[0, "wbc"] = 0.0
    test.loc[1, "wbc"] = -3.0
    z = prep.transform(test)["hematology"][:2, 0]
    floor = np.log(train["wbc"].min() / 2)
    np.testing.assert_allclose(z, (floor - logged.mean()) / logged.std(), atol=1e-5)
    # off: the raw column, standardised
    plain = FoldPreprocessor(SPEC, PreprocessSettings(n_tumour=4, n_node=3)).fit(train)
    raw = train["wbc"].to_numpy()
    np.testing.assert_allclose(plain.transform(train)["hematology"][:, 0],
                               (raw - raw.mean()) / raw.std(), atol=1e-5)
    with pytest.raises(ConfigError, match="log_skew must be >= 0"):
        PreprocessSettings(log_skew=-1)
