"""Cohort stage: table validation, merge + exclusions, folds, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmfusion.cohort.folds import FoldSettings, make_folds
from mmfusion.cohort.merge import build_cohort, read_cohort_table
from mmfusion.cohort.tables import TableSettings, read_tables
from mmfusion.errors import ConfigError, TableError

COHORT = {"id_column": "patient_id", "label_column": "lnm", "positive_value": 1}
TABLES = {
    "negative_value": 0,
    "clinical": {"numeric": ["age", "kps"],
                 "categorical": {"sex": ["M", "F"], "t_stage": ["T1", "T2", "T3", "T4"]}},
    "hematology": {"numeric": ["wbc", "crp"]},
}


def write_tables(tmp_path, n=12, seed=0, clinical_edit=None, hema_edit=None):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    clin = pd.DataFrame({
        "patient_id": ids, "lnm": [i % 2 for i in range(n)],
        "age": rng.integers(40, 80, n), "kps": rng.choice([70, 80, 90], n),
        "sex": rng.choice(["M", "F"], n), "t_stage": rng.choice(["T1", "T2", "T3", "T4"], n),
        "notes": "x",
    }).astype(object)
    hema = pd.DataFrame({"patient_id": ids, "wbc": rng.normal(6, 1, n).round(2),
                         "crp": rng.normal(5, 2, n).round(2)}).astype(object)
    clin.loc[1, "kps"] = ""  # a missing value
    if clinical_edit:
        clinical_edit(clin)
    if hema_edit:
        hema_edit(hema)
    c, h = tmp_path / "clinical.csv", tmp_path / "hematology.tsv"
    clin.to_csv(c, index=False)
    hema.to_csv(h, sep="\t", index=False)
    return c, h, ids


def write_patients(tmp_path, ids, excluded=()):
    """Convert statuses + fake radiomics rows for `ids`."""
    statuses = []
    rng = np.random.default_rng(1)
    for pid in ids:
        d = tmp_path / "patients" / pid
        d.mkdir(parents=True)
        ok = pid not in excluded
        (d / "convert_status.json").write_text(json.dumps(
            {"patient_id": pid, "status": "ok" if ok else "excluded",
             "reason": "" if ok else "no GTV-T ROI matched", "warnings": []}))
        if ok:
            present = int(pid[-1]) % 3 != 0
            row = {"patient_id": pid, "gtvt_original_firstorder_Mean": rng.normal(),
                   "gtvt_original_shape_MeshVolume": rng.normal(),
                   "gtvn_original_firstorder_Mean": rng.normal() if present else np.nan,
                   "gtvn_present": present, "gtvn_count": 2 * present}
            pd.DataFrame([row]).to_csv(d / "radiomics.tsv", sep="\t", index=False)
        statuses.append(d / "convert_status.json")
    return statuses


def settings():
    return TableSettings.from_config(COHORT, TABLES)


def test_read_tables_types(tmp_path):
    c, h, ids = write_tables(tmp_path)
    clin, hema = read_tables(c, h, settings())
    assert list(clin.columns) == ["label", "age", "kps", "sex", "t_stage"]
    assert clin["label"].tolist() == [i % 2 for i in range(12)]
    assert np.isnan(clin.loc["P001", "kps"])
    assert list(hema.columns) == ["wbc", "crp"]


@pytest.mark.parametrize("edit, match, patient", [
    (lambda c: c.__setitem__("lnm", ["2"] + ["0"] * 11), "label lnm='2' is neither positive",
     "P000"),
    (lambda c: c.loc.__setitem__((3, "sex"), "X"), "column sex: unknown category 'X'", "P003"),
    (lambda c: c.loc.__setitem__((2, "patient_id"), "P001"), r"duplicate patient ID\(s\)",
     "P001"),
    (lambda c: c.loc.__setitem__((4, "age"), "old"), "column age: 'old' is not a number",
     "P004"),
    (lambda c: c.drop(columns=["kps"], inplace=True), r"\['kps'\] not in table", None),
])
def test_bad_tables(tmp_path, edit, match, patient):
    """Each problem: its own message, naming the patient (where there is one) and the
    file, with a fix."""
    c, h, _ = write_tables(tmp_path, clinical_edit=edit)
    with pytest.raises(TableError, match=match) as info:
        read_tables(c, h, settings())
    where = f"[patient {patient}, file {c}]" if patient else f"[file {c}]"
    assert str(info.value).startswith(where)
    assert "Potential fix: " in str(info.value)


def test_label_values_lists_and_missing(tmp_path):
    """LUNG1-style label: N stage > 0 -> positive; a missing label stays missing."""
    def edit(c):
        c["lnm"] = ["0", "3", "1.0", "", "2", "0", "0", "1", "0", "2", "0", "3"]
    c, h, _ = write_tables(tmp_path, clinical_edit=edit)
    s = TableSettings.from_config({**COHORT, "positive_value": [1, 2, 3, 4]},
                                  {**TABLES, "negative_value": [0]})
    clin, _ = read_tables(c, h, s)
    assert clin["label"].tolist()[:3] == [0, 1, 1] and np.isnan(clin["label"].iloc[3])


def test_settings_errors():
    with pytest.raises(ConfigError, match=r"unknown tables setting\(s\): \['colums'\]"):
        TableSettings.from_config(COHORT, {**TABLES, "colums": {}})
    with pytest.raises(ConfigError, match="categorical.sex needs two or more distinct levels"):
        TableSettings.from_config(COHORT, {"clinical": {"categorical": {"sex": ["M"]}}})
    with pytest.raises(ConfigError, match=r"columns declared in both tables: \['wbc'\]"):
        TableSettings.from_config(COHORT, {"clinical": {"numeric": ["wbc"]},
                                           "hematology": {"numeric": ["wbc"]}})


def test_build_cohort_and_exclusions(tmp_path):
    def clin_edit(c):
        c.loc[5, "lnm"] = ""  # no label
    def hema_edit(h):
        h.drop(index=7, inplace=True)  # not in hematology
    c, h, ids = write_tables(tmp_path, n=14, clinical_edit=clin_edit, hema_edit=hema_edit)
    image_ids = ids[:12] + ["P900"]  # P012, P013 lack images; P900 lacks table rows
    statuses = write_patients(tmp_path, image_ids, excluded={"P002"})
    cohort = build_cohort(c, h, statuses, settings(), unlinked_patients=["P013", "P777"])
    ex = {(r.patient_id, r.stage): r.reason for r in cohort.exclusions.itertuples()}
    assert ex[("P002", "convert")] == "no GTV-T ROI matched"
    assert "no label" in ex[("P005", "cohort")]
    assert "hematology" in ex[("P007", "cohort")]
    assert "clinical" in ex[("P900", "cohort")]
    assert "no images" in ex[("P012", "cohort")]
    assert ex[("P013", "index")].startswith("no CT") and ("P777", "index") in ex
    assert len(ex) == 7
    t = cohort.table
    assert sorted(t["patient_id"]) == sorted(set(ids[:12]) - {"P002", "P005", "P007"})
    assert list(t.columns[:2]) == ["patient_id", "label"] and t["label"].isin([0, 1]).all()
    g = cohort.spec["groups"]
    assert g["radiomics_tumour"] == ["gtvt_original_firstorder_Mean",
                                     "gtvt_original_shape_MeshVolume"]
    assert g["radiomics_node"] == ["gtvn_original_firstorder_Mean"]
    assert cohort.spec["flags"]["radiomics_node"] == ["gtvn_present", "gtvn_count"]
    assert g["clinical"]["categorical"]["sex"] == ["M", "F"]
    cohort.write(tmp_path / "c" / "table.tsv", tmp_path / "c" / "spec.json",
                 tmp_path / "qc" / "exclusions.tsv")
    back = read_cohort_table(tmp_path / "c" / "table.tsv", cohort.spec)
    assert back.shape == t.shape and back["sex"].isin(["M", "F"]).all()
    ex_tsv = pd.read_csv(tmp_path / "qc" / "exclusions.tsv", sep="\t")
    assert list(ex_tsv.columns) == ["patient_id", "stage", "reason"]


def test_sanitised_ids_join(tmp_path):
    from mmfusion.ids import sanitize_id

    def edit(c):
        c.loc[0, "patient_id"] = "P 000/a"
    def hedit(h):
        h.loc[0, "patient_id"] = "P 000/a"
    c, h, ids = write_tables(tmp_path, clinical_edit=edit, hema_edit=hedit)
    safe = sanitize_id("P 000/a")
    statuses = write_patients(tmp_path, [safe, *ids[1:]])
    cohort = build_cohort(c, h, statuses, settings())
    assert safe in set(cohort.table["patient_id"]) and cohort.exclusions.empty


def test_missing_radiomics_row_is_an_error(tmp_path):
    c, h, ids = write_tables(tmp_path)
    statuses = write_patients(tmp_path, ids)
    (tmp_path / "patients" / "P004" / "radiomics.tsv").unlink()
    with pytest.raises(TableError, match="radiomics rows missing"):
        build_cohort(c, h, statuses, settings())


@pytest.mark.parametrize("n_folds", [3, 5])
def test_folds_disjoint_stratified_seeded(n_folds):
    ids = [f"P{i:03d}" for i in range(60)]
    y = np.array([1 if i % 5 < 2 else 0 for i in range(60)])
    s = FoldSettings(n_folds=n_folds, val_fraction=0.2, seed=7)
    folds = make_folds(ids, y, s)
    assert set(folds.columns) == {"patient_id", "fold", "split"}
    assert len(folds) == 60 * n_folds
    label = dict(zip(ids, y, strict=True))
    for k, part in folds.groupby("fold"):
        sets = {sp: set(part.loc[part.split == sp, "patient_id"])
                for sp in ("train", "val", "test")}
        assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
        assert not (sets["val"] & sets["test"])
        assert set.union(*sets.values()) == set(ids)
        # stratified: each split's positives are its size x 0.4, rounded up or down
        # (StratifiedKFold and the stratified validation split allocate each class to
        # within one patient of its share)
        for sp, members in sets.items():
            n_pos = sum(label[p] for p in members)
            assert abs(n_pos - 0.4 * len(members)) < 1, (k, sp, n_pos, len(members))
        if n_folds == 3:  # 24 positives, 36 negatives: 8 and 12 in every test fold
            assert sum(label[p] for p in sets["test"]) == 8 and len(sets["test"]) == 20
    tested = folds.loc[folds.split == "test", "patient_id"]
    assert sorted(tested) == sorted(ids)
    pd.testing.assert_frame_equal(folds, make_folds(ids, y, s))
    assert not folds.equals(make_folds(ids, y, FoldSettings(n_folds=n_folds, seed=8)))


def test_folds_too_small():
    with pytest.raises(TableError, match="too few"):
        make_folds(["a", "b", "c", "d", "e"], [0, 0, 0, 1, 1], FoldSettings())
    folds = make_folds([f"p{i}" for i in range(12)], [1, 1, 1] + [0] * 9, FoldSettings())
    assert len(folds) == 36


def test_cli_build_and_folds(tmp_path):
    from mmfusion.cli import main

    c, h, ids = write_tables(tmp_path, n=24)
    statuses = write_patients(tmp_path, ids)
    out = tmp_path / "results"
    argv = ["cohort", "build", "--clinical", str(c), "--hematology", str(h),
            "--status", *map(str, statuses), "--cohort-settings", json.dumps(COHORT),
            "--tables-settings", json.dumps(TABLES), "--table", str(out / "cohort/table.tsv"),
            "--spec", str(out / "cohort/feature_spec.json"),
            "--exclusions", str(out / "qc/exclusions.tsv")]
    assert main(argv) == 0
    assert main(["cohort", "folds", "--table", str(out / "cohort/table.tsv"),
                 "--settings", json.dumps({"n_folds": 3, "seed": 1}),
                 "--out", str(out / "cohort/folds.tsv")]) == 0
    folds = pd.read_csv(out / "cohort/folds.tsv", sep="\t")
    assert len(folds) == 72 and set(folds.split) == {"train", "val", "test"}
    bad = [*argv[:-6], "--tables-settings", json.dumps({"clinical": {"numeric": ["nope"]}}),
           *argv[-6:]]
    assert main(bad) == 1
