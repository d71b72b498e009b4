"""End-to-end: a cohort laid out unlike the demo, driven only through `--configfile`.

Other folder and file names, a semicolon CSV and a TSV, other and fewer table columns, an
ID column not called `patient_id`, a label coded as text, patients without any GTV-N and
ROI names only the user's regexes match. The demo's config.yaml must not leak into the
run: the resolved config holds what the user declared plus schema defaults, nothing else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml

from mmfusion.synth import SynthSettings, generate_cohort
from tests.test_workflow import _snakemake

SYNTH = SynthSettings(n_patients=12, seed=21, prevalence=0.5, matrix=64, n_slices=32,
                      pixel_spacing=5.2, slice_thickness=5.0)
NO_NODES = ("ESO-0003", "ESO-0008")  # their GTV-N ROIs are deleted from the RTSTRUCT


def _rename_rois(rtstruct: Path, patient: str) -> None:
    """Hospital ROI names (`Tumor_primary`, `LK_1`, ...); drop the nodes of NO_NODES."""
    ds = pydicom.dcmread(rtstruct)
    keep = []
    for roi in ds.StructureSetROISequence:
        name = roi.ROIName.upper().replace("_", "-")
        if name.startswith(("GTV-T", "GTVP")):
            roi.ROIName = "Tumor_primary"
        elif name.startswith(("GTV-N", "GTVN", "GTV-LN")):
            if patient in NO_NODES:
                continue
            roi.ROIName = f"LK_{roi.ROINumber}"
        keep.append(int(roi.ROINumber))
    ds.StructureSetROISequence = [r for r in ds.StructureSetROISequence
                                  if int(r.ROINumber) in keep]
    ds.ROIContourSequence = [c for c in ds.ROIContourSequence
                             if int(c.ReferencedROINumber) in keep]
    ds.RTROIObservationsSequence = [o for o in ds.RTROIObservationsSequence
                                    if int(o.ReferencedROINumber) in keep]
    ds.save_as(rtstruct)


def make_hospital_archive(root: Path) -> dict[str, Path]:
    """A synthetic cohort re-laid as a hospital export; returns the user's three inputs."""
    export = root / "synth"
    generate_cohort(export, SYNTH, jobs=1, progress=False)
    archive = root / "PACS export 2024"
    for i, patient in enumerate(sorted(p.name for p in (export / "dicom").iterdir())):
        case = archive / f"case {i + 1:03d}"
        for k, ct in enumerate(sorted((export / "dicom" / patient / "CT").glob("*.dcm"))):
            (case / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(ct, case / "images" / f"IM{k:05d}")
        rt = next((export / "dicom" / patient / "RTSTRUCT").glob("*.dcm"))
        (case / "planning").mkdir()
        shutil.copy(rt, case / "planning" / "struct.dcm")
        _rename_rois(case / "planning" / "struct.dcm", patient)

    clinical = pd.read_csv(export / "clinical.csv", dtype=str, keep_default_na=False)
    clinical = pd.DataFrame({
        "MRN": clinical["patient_id"],
        "N_status": clinical["lnm"].map({"1": "N+", "0": "N0"}),
        "Age": clinical["age"],
        "Gender": clinical["sex"].map({"M": "male", "F": "female"}),
        "cT": "c" + clinical["t_stage"],
        "Notes": "free text the model never reads",
    })
    hematology = pd.read_csv(export / "hematology.csv", dtype=str, keep_default_na=False)
    hematology = pd.DataFrame({"MRN": hematology["patient_id"], "WBC": hematology["wbc"],
                               "Albumin": hematology["albumin"], "CEA": hematology["cea"]})
    tables = root / "tables"
    tables.mkdir()
    clinical.to_csv(tables / "Klinik export.csv", sep=";", index=False)  # locale CSV
    hematology.to_csv(tables / "labs.tsv", sep="\t", index=False)
    return {"dicom_root": archive, "clinical": tables / "Klinik export.csv",
            "hematology": tables / "labs.tsv"}


USER_CONFIG = """\
results: {results}
cohort:
  dicom_root: {dicom_root}
  clinical: {clinical}
  hematology: {hematology}
  id_column: MRN
  label_column: N_status
  positive_value: "N+"
rois:
  tumour: "tumou?r_primary"
  node: "LK_\\\\d+"
tables:
  negative_value: "N0"
  clinical:
    numeric: [Age]
    categorical:
      Gender: [male, female]
      cT: [cT1, cT2, cT3, cT4]
  hematology:
    numeric: [WBC, Albumin, CEA]
folds:
  n_folds: 3
crop:
  spacing: [4.0, 4.0, 5.0]
  tumour_size: [8, 16, 16]
  node_sizes: [[4, 12, 12], [4, 12, 12], [4, 12, 12]]
preprocess:
  n_tumour: 4
  n_node: 3
model:
  variants: [base1, mmfusion, logreg]
  depth: 10
  base_width: 4
  shared_backbone: true
  mmrl_dim: 8
  hga_dim: 8
  hga_out: 8
  head_hidden: 8
  diffusion_hidden: 8
  n_samples: 4
train:
  epochs: 2
  warmup_epochs: 1
  restart_epoch: 2
  batch_size: 4
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("real_cohort")
    inputs = make_hospital_archive(root)
    text = USER_CONFIG.format(results=root / "results",
                              **{k: f'"{v}"' for k, v in inputs.items()})
    user = yaml.safe_load(text)
    cfg = root / "my cohort.yaml"
    cfg.write_text(text)
    res = _snakemake(["--cores", "2", "--configfile", str(cfg), "--nolock"])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    return root / "results", user


@pytest.mark.slow
def test_real_cohort_runs_to_the_report(real_run: tuple[Path, dict]) -> None:
    results, _ = real_run
    table = pd.read_csv(results / "cohort" / "table.tsv", sep="\t")
    assert len(table) == SYNTH.n_patients
    assert set(table["label"]) == {0, 1}  # "N+" / "N0" read as 1 / 0
    spec = yaml.safe_load((results / "cohort" / "feature_spec.json").read_text())
    assert spec["groups"]["clinical"]["numeric"] == ["Age"]
    assert set(spec["groups"]["clinical"]["categorical"]) == {"Gender", "cT"}
    assert spec["groups"]["hematology"]["numeric"] == ["WBC", "Albumin", "CEA"]
    nodes = table.set_index("patient_id")["gtvn_present"]
    assert all(nodes[p] == 0 for p in NO_NODES) and nodes.sum() > 0
    for variant in ("base1", "mmfusion", "logreg"):
        scored = pd.concat(pd.read_csv(results / "models" / variant / f"fold{k}" /
                                       "predictions.csv") for k in range(3))
        assert sorted(scored["patient_id"]) == sorted(table["patient_id"]), variant
    summary = pd.read_csv(results / "report" / "metrics_summary.csv")
    assert sorted(set(summary["variant"])) == ["base1", "logreg", "mmfusion"]
    assert len(summary) == 3 * 3
    assert (results / "report" / "config.resolved.yaml").is_file()
    assert "## Configuration" in (results / "report" / "summary.md").read_text()


@pytest.mark.slow
def test_resolved_config_is_the_users_plus_schema_defaults(real_run: tuple[Path, dict]) -> None:
    from mmfusion.settings import resolve_config

    results, user = real_run
    resolved = yaml.safe_load((results / "config.resolved.yaml").read_text())
    assert resolved == resolve_config(user)
    # what the user declared, and nothing from the demo's config.yaml
    assert resolved["tables"]["clinical"]["categorical"] == {
        "Gender": ["male", "female"], "cT": ["cT1", "cT2", "cT3", "cT4"]}
    assert resolved["tables"]["hematology"] == {"numeric": ["WBC", "Albumin", "CEA"],
                                                "categorical": {}}
    assert resolved["cohort"]["synthetic"] is False
    assert resolved["model"]["variants"] == ["base1", "mmfusion", "logreg"]
    # keys the user left out: the schema's defaults (the demo sets other values)
    assert resolved["train"]["lr"] == 0.0001 and resolved["train"]["weight_decay"] == 0.0005
    assert resolved["model"]["dropout"] == 0.2
    assert resolved["synth"]["n_patients"] == 60
    assert (results / "report" / "config.resolved.yaml").read_text() == \
        (results / "config.resolved.yaml").read_text()
