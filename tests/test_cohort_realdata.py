"""Real data end to end: LUNG1-001 (TCIA NSCLC-Radiomics, CC BY-NC 3.0; Aerts et al., Nat
Commun 2014) goes index -> convert (GTV-1 as tumour) -> crop -> radiomics and joins the
NSCLC-Radiomics clinical subset (label: Clinical.N.Stage > 0) into a one-patient table.

No hematology table exists for this cohort, so none is given. The CT is 69 MiB: slow.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from mmfusion.cli import main

LUNG1 = "nsclc-radiomics-lung1-001/LUNG1-001"
CLINICAL = "nsclc-radiomics-clinical-subset/NSCLC-Radiomics-Lung1.clinical-version3-Oct-2019.csv"
COHORT = {"id_column": "PatientID", "label_column": "Clinical.N.Stage",
          "positive_value": [1, 2, 3, 4]}
TABLES = {
    "negative_value": [0],
    "clinical": {"numeric": ["age", "clinical.T.Stage"],
                 "categorical": {"gender": ["male", "female"],
                                 "Histology": ["squamous cell carcinoma", "large cell", "nos",
                                               "adenocarcinoma"]}},
    "hematology": {},
}
CROP = {"spacing": [1.0, 1.0, 3.0], "tumour_size": [32, 128, 128],
        "node_sizes": [[8, 48, 48], [8, 32, 32], [8, 32, 32]]}


@pytest.mark.slow
def test_lung1_to_one_patient_table(shared_data, tmp_path):
    if importlib.util.find_spec("mmfusion.commands.convert") is None:
        pytest.skip("`mmfusion convert` does not exist yet (mmfusion.dicom stage)")
    index = tmp_path / "dicom_index.tsv"
    assert main(["index", str(shared_data / LUNG1), "--out", str(index), "--no-progress"]) == 0
    from mmfusion.dicom.index import patients_from_index

    assert patients_from_index(index) == ["LUNG1-001"]
    folder = tmp_path / "patients" / "LUNG1-001"
    status = folder / "convert_status.json"
    assert main(["convert", "--index", str(index), "--patient", "LUNG1-001", "--out", str(folder),
                 "--tumour-roi", "GTV-1", "--status-out", str(status)]) == 0
    assert json.loads(status.read_text())["status"] == "ok"

    assert main(["crop", str(status), "--settings", json.dumps(CROP)]) == 0
    with np.load(folder / "patches.npz") as npz:
        assert npz["tumour"].shape == (32, 128, 128)
        assert npz["node_present"].tolist() == [0, 0, 0]  # LUNG1 has no GTV-N
        meta = json.loads(str(npz["meta"]))
    assert meta["tumour"]["fraction_inside"] > 0.95
    assert (folder / "qc.png").stat().st_size > 10_000

    assert main(["radiomics", str(status)]) == 0
    row = pd.read_csv(folder / "radiomics.tsv", sep="\t")
    # GTV-1 of LUNG1-001 is a large tumour: IBSI-resampled mesh volume well above 100 cm^3
    assert row.loc[0, "gtvt_original_shape_MeshVolume"] > 100_000
    assert row.loc[0, "gtvn_present"] == 0

    out = tmp_path / "results"
    assert main(["cohort", "build", "--clinical", str(shared_data / CLINICAL),
                 "--status", str(status), "--cohort-settings", json.dumps(COHORT),
                 "--tables-settings", json.dumps(TABLES),
                 "--table", str(out / "cohort/table.tsv"),
                 "--spec", str(out / "cohort/feature_spec.json"),
                 "--exclusions", str(out / "qc/exclusions.tsv")]) == 0
    table = pd.read_csv(out / "cohort/table.tsv", sep="\t")
    assert table.shape[0] == 1
    first = table.iloc[0]
    assert first["patient_id"] == "LUNG1-001" and first["label"] == 1  # cN3
    assert first["gender"] == "male" and first["age"] == pytest.approx(78.7515)
    assert first["gtvt_original_shape_MeshVolume"] == pytest.approx(
        row.loc[0, "gtvt_original_shape_MeshVolume"])
    exclusions = pd.read_csv(out / "qc/exclusions.tsv", sep="\t")
    # the other 199 clinical patients have no images here
    assert len(exclusions) == 199 and set(exclusions["stage"]) == {"cohort"}
