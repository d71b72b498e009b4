"""Preflight (`mmfusion check`, rule `preflight`): the index crossed with the tables and the
config before any conversion. Hand-written index rows keep each case exact."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmfusion.cohort.preflight import ERROR, WARNING, PreflightInputs, run_preflight
from mmfusion.cohort.tables import TableSettings
from mmfusion.dicom.index_io import COLUMNS, write_index
from mmfusion.ids import sanitize_id
from tests.test_workflow import REPO, TINY_SYNTH, _snakemake

TUMOUR, NODE = "GTV[-_ ]?T", "GTV[-_ ]?N\\d*"


def _rows(pid: str, rois: list[str], *, linked: bool = True, raw: str | None = None) -> list[dict]:
    blank = {c: "" for c in COLUMNS} | {"problems": [], "problem_codes": [], "files": [],
                                        "referenced_for_uids": [], "referenced_series_uids": []}
    raw = pid if raw is None else raw
    ct = blank | {"patient_id": raw, "patient": sanitize_id(raw), "modality": "CT",
                  "series_uid": f"1.{len(pid)}", "roi_names": []}
    rs = blank | {"patient_id": raw, "patient": sanitize_id(raw), "modality": "RTSTRUCT",
                  "linked_series_uid": f"1.{len(pid)}" if linked else "", "roi_names": rois}
    return [ct, rs]


def _cohort(tmp_path: Path, n: int = 12, *, clinical_extra: str = "", drop: tuple = (),
            labels: dict[str, str] | None = None, index_rows: list[dict] | None = None,
            id_column: str = "pid") -> PreflightInputs:
    """n patients P01..Pn, alternating labels, each with a GTV-T and a GTV-N1."""
    ids = [f"P{i:02d}" for i in range(1, n + 1)]
    rows = index_rows if index_rows is not None else [
        r for pid in ids for r in _rows(pid, ["GTV-T", "GTV-N1", "Body"])]
    write_index(rows, tmp_path / "index.tsv")
    labels = labels or {}
    lines = ["pid;pN;age"] + [f"{pid};{labels.get(pid, 'N+' if i % 2 else 'N0')};60"
                              for i, pid in enumerate(ids) if pid not in drop]
    (tmp_path / "clin.csv").write_text("\n".join(lines) + "\n" + clinical_extra)
    tables = TableSettings.from_config(
        {"id_column": id_column, "label_column": "pN", "positive_value": "N+"},
        {"negative_value": "N0", "clinical": {"numeric": ["age"]}})
    return PreflightInputs(tmp_path / "index.tsv", tmp_path / "clin.csv", None, tables,
                           TUMOUR, NODE, n_folds=2)


def _kinds(findings, severity: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in findings:
        if f.severity == severity:
            out.setdefault(f.kind, []).append(f.patient_id)
    return out


def test_a_clean_cohort_has_no_findings(tmp_path: Path) -> None:
    assert run_preflight(_cohort(tmp_path)) == []


def test_patients_missing_on_either_side_and_missing_labels_are_warnings(tmp_path: Path) -> None:
    found = run_preflight(_cohort(tmp_path, drop=("P03",), clinical_extra="P99;N0;70\n",
                                  labels={"P05": ""}))
    warnings = _kinds(found, WARNING)
    assert warnings == {"no_table_row": ["P03"], "no_images": ["P99"],
                        "missing_label": ["P05"]}
    assert not _kinds(found, ERROR)


def test_a_wrong_id_column_is_an_error_naming_it(tmp_path: Path) -> None:
    found = run_preflight(_cohort(tmp_path, id_column="MRN"))
    errors = [f for f in found if f.severity == ERROR]
    assert [f.kind for f in errors] == ["table"]
    assert "MRN" in errors[0].detail


def test_a_tumour_regex_matching_nothing_lists_the_roi_names(tmp_path: Path) -> None:
    inputs = _cohort(tmp_path)
    found = run_preflight(PreflightInputs(**{**inputs.__dict__, "tumour_regex": "Tumor_primary"}))
    errors = _kinds(found, ERROR)
    assert list(errors) == ["no_tumour_roi_anywhere"]
    detail = next(f.detail for f in found if f.kind == "no_tumour_roi_anywhere")
    assert "GTV-T (12)" in detail and "Body (12)" in detail
    assert len(_kinds(found, WARNING)["no_tumour_roi"]) == 12


def test_one_patient_without_a_tumour_roi_is_a_warning(tmp_path: Path) -> None:
    rows = [r for i in range(1, 13) for r in _rows(
        f"P{i:02d}", ["GTV-N1"] if i == 4 else ["GTV-T", "GTV-N1"])]
    found = run_preflight(_cohort(tmp_path, index_rows=rows))
    assert _kinds(found, WARNING) == {"no_tumour_roi": ["P04"]}
    assert "ROIs present: GTV-N1" in found[0].detail


def test_an_invalid_regex_is_an_error(tmp_path: Path) -> None:
    inputs = _cohort(tmp_path)
    found = run_preflight(PreflightInputs(**{**inputs.__dict__, "node_regex": "GTV-N("}))
    assert "invalid_regex" in _kinds(found, ERROR)


def test_two_original_ids_on_one_folder_are_an_error_naming_both(tmp_path: Path) -> None:
    rows = [r for i in range(1, 13) for r in _rows(f"P{i:02d}", ["GTV-T"])]
    twin = _rows("P01", ["GTV-T"], raw="P01 ")  # same folder, different original
    for r in twin:
        r["patient"] = "P01"
    found = run_preflight(_cohort(tmp_path, index_rows=rows + twin))
    collision = [f for f in found if f.kind == "id_collision"]
    assert [f.severity for f in collision] == [ERROR]
    assert "'P01'" in collision[0].detail and "'P01 '" in collision[0].detail


def test_too_few_patients_of_a_class_for_the_folds_is_an_error(tmp_path: Path) -> None:
    # 12 patients, 2 folds: one of each class per test fold is the least (else an error),
    # fewer than 2 per fold is a warning, 4 positives are clean
    labels = {f"P{i:02d}": "N0" for i in range(1, 13)}
    labels["P01"] = "N+"
    found = run_preflight(_cohort(tmp_path, labels=labels))
    assert list(_kinds(found, ERROR)) == ["too_few_per_class"]
    assert "1 positive and 11 negative" in found[0].detail
    labels.update({"P02": "N+", "P03": "N+"})
    found = run_preflight(_cohort(tmp_path, labels=labels))
    assert not _kinds(found, ERROR) and list(_kinds(found, WARNING)) == ["few_per_class"]
    labels["P04"] = "N+"
    assert run_preflight(_cohort(tmp_path, labels=labels)) == []


def test_cli_writes_the_report_and_exits_1_on_an_error(tmp_path: Path) -> None:
    inputs = _cohort(tmp_path, id_column="MRN")
    cmd = [sys.executable, "-m", "mmfusion", "check", "--index", str(inputs.index_tsv),
           "--clinical", str(inputs.clinical),
           "--cohort-settings", '{"id_column": "MRN", "label_column": "pN", '
           '"positive_value": "N+"}',
           "--tables-settings", '{"negative_value": "N0"}', "--folds-settings",
           '{"n_folds": 2}', "--report", str(tmp_path / "pf.tsv"),
           "--summary", str(tmp_path / "pf.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "preflight found 1 error(s)" in res.stderr and "MRN" in res.stderr
    assert (tmp_path / "pf.tsv").read_text().splitlines()[1].startswith("error\ttable\t")
    assert not (tmp_path / "pf.json").exists()
    cmd[cmd.index("--cohort-settings") + 1] = ('{"id_column": "pid", "label_column": "pN", '
                                               '"positive_value": "N+"}')
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((tmp_path / "pf.json").read_text()) == {"passed": True, "counts": {}}


@pytest.mark.slow
def test_the_workflow_stops_at_preflight_before_any_conversion(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["synth"] = TINY_SYNTH
    config["rois"]["tumour"] = "Tumor_primary"  # the demo's ROIs are GTV-T
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    start = time.monotonic()
    res = _snakemake(["--cores", "2", "--configfile", str(cfg), "--nolock"])
    elapsed = time.monotonic() - start
    assert res.returncode != 0
    assert elapsed < 90, elapsed  # synth + index + preflight, no conversion
    report = (tmp_path / "results/qc/preflight.tsv").read_text()
    assert "error\tno_tumour_roi_anywhere" in report
    assert not list((tmp_path / "results").glob("patients/*/convert_status.json"))
    assert "matches no ROI of any patient" in (tmp_path / "results/logs/preflight.log").read_text()


def test_an_invalid_regex_stops_the_workflow_before_any_job(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["rois"]["node"] = "GTV-N("
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    res = _snakemake(["-n", "--configfile", str(cfg)])
    assert res.returncode != 0
    assert "rois.node is not a valid regular expression" in res.stderr + res.stdout


def test_convert_with_an_invalid_regex_fails_instead_of_excluding(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "mmfusion", "convert", str(tmp_path), "--out",
           str(tmp_path / "out"), "--status-out", str(tmp_path / "status.json"),
           "--tumour-roi", "GTV-T("]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1
    assert "rois.tumour is not a valid regular expression" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "status.json").exists()
