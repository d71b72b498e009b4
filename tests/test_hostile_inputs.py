"""Hostile inputs (issue 11, part 1): each gets a clean outcome, never a traceback and never a
silently changed volume. The outcome is a one-line error naming patient and file, or a
recorded exclusion / problem code with the rest of the cohort going on."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from mmfusion.cli import main
from mmfusion.cohort.merge import _sanitised_index, read_radiomics_rows
from mmfusion.cohort.tables import TableSettings, read_table, read_tables
from mmfusion.dicom.convert import (
    ConvertSettings,
    convert_patient,
    inputs_from_folder,
    inputs_from_index,
    select_inputs,
)
from mmfusion.dicom.index import index_dicom, patients_from_index
from mmfusion.dicom.index_io import read_index, write_index
from mmfusion.dicom.problems import Problem
from mmfusion.dicom.rasterize import rasterise_roi
from mmfusion.dicom.rtstruct import Contour, parse_rtstruct
from mmfusion.errors import ConfigError, DicomError, TableError
from mmfusion.ids import MAX_LENGTH, NO_PATIENT_ID, is_hashed_form, sanitize_id
from tests.dicom_fixtures import CTGrid, circle, sphere_contours, write_ct, write_rtstruct

SETTINGS = ConvertSettings()
WILDCARD = re.compile(r"[A-Za-z0-9._-]+")  # the workflow's `patient` wildcard constraint


def _grid(pid: str = "PAT001", **kwargs) -> CTGrid:
    return CTGrid(patient_id=pid, shape=kwargs.pop("shape", (8, 16, 16)), **kwargs)


def _case(root: Path, grid: CTGrid | None = None, *, rois: dict | None = None) -> list[Path]:
    """A tiny patient: CT slices ct/img_0000.dcm (lowest) ... and rs.dcm with GTV-T."""
    grid = grid or _grid()
    files = write_ct(root / "ct", grid, shuffle_names=False)
    rois = rois if rois is not None else {"GTV-T": sphere_contours(grid, (8.0, 8.0), 3.5, 4.0)}
    write_rtstruct(root / "rs.dcm", grid, rois)
    return files


def _edit_contour(path: Path, change, roi: int = 0) -> None:
    """Rewrite, in the file's bytes, the first ContourData of ROI item `roi` with
    `change(values as strings)` (same length, space-padded: pydicom refuses to write
    the broken values we want)."""
    ds = pydicom.dcmread(path)
    skip = sum(len(r.ContourSequence) for r in ds.ROIContourSequence[:roi])
    raw = bytearray(path.read_bytes())
    at = -1
    for _ in range(skip + 1):
        at = raw.index(b"\x06\x30\x50\x00DS", at + 1)
    length = int.from_bytes(raw[at + 6:at + 8], "little")
    values = bytes(raw[at + 8:at + 8 + length]).decode().strip().split("\\")
    new = "\\".join(change(values)).encode()
    assert len(new) <= length
    raw[at + 8:at + 8 + length] = new.ljust(length)
    path.write_bytes(bytes(raw))


def _index(root: Path, out: Path) -> list[dict]:
    assert main(["index", str(root), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    return read_index(out)


def _convert_status(index: Path, patient: str, out: Path) -> dict:
    status = out / "convert_status.json"
    assert main(["convert", "--index", str(index), "--patient", patient, "--out", str(out),
                 "--status-out", str(status)]) == 0
    return json.loads(status.read_text())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmfusion", *args], capture_output=True,
                          text=True)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


# --------------------------------------------------------------------------- 1. patient IDs

def test_long_ids_sharing_their_first_64_characters_get_distinct_folders():
    a, b = "P" * 64 + "-visit1", "P" * 64 + "-visit2"
    safe_a, safe_b = sanitize_id(a), sanitize_id(b)
    assert safe_a != safe_b
    assert len(safe_a) <= MAX_LENGTH and is_hashed_form(safe_a) and is_hashed_form(safe_b)
    assert WILDCARD.fullmatch(safe_a) and WILDCARD.fullmatch(safe_b)


def test_safe_ids_are_kept_and_never_equal_a_hashed_form():
    assert sanitize_id("ESO-0001") == "ESO-0001"  # existing folders keep their names
    assert sanitize_id("LUNG1-001") == "LUNG1-001"
    hashed = sanitize_id("a/b")
    assert is_hashed_form(hashed)
    # An ID spelled like another ID's hashed form is hashed too, so it cannot take its folder.
    assert sanitize_id(hashed) != hashed and is_hashed_form(sanitize_id(hashed))
    rng = random.Random(11)
    alphabet = "Aa0._-/ é" + "h0123456789abcdef"
    ids = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 90))) for _ in range(3000)}
    ids = {i for i in ids if i.strip()}
    ids |= {sanitize_id(i) for i in list(ids)}  # the outputs as inputs: the adversarial case
    ids |= {"x" * 64, "x" * 65, "a_b", "a b", "a:b", "-a", ".a", "a" + "-h" + "0" * 16}
    out = {}
    for raw in ids:
        safe = sanitize_id(raw)
        assert WILDCARD.fullmatch(safe) and len(safe) <= MAX_LENGTH
        assert not safe.startswith((".", "-"))
        # kept unchanged <=> not of the hashed form: the two sets of outputs are disjoint
        assert (safe == raw.strip()) != is_hashed_form(safe), raw
        assert out.setdefault(safe, raw.strip()) == raw.strip(), (raw, out[safe])


@pytest.mark.parametrize("raw", ["a" * 300, "ab" * 150, "x" * 25, "ESO" * 30, "7" * 64])
def test_repeated_ids_pass_snakemakes_periodic_wildcard_check(raw):
    from snakemake.io import PeriodicityDetector  # what refuses the job graph

    safe = sanitize_id(raw)
    assert PeriodicityDetector().is_periodic(raw) is not None or len(raw) < 30
    assert PeriodicityDetector().is_periodic(safe) is None
    assert len(safe) <= MAX_LENGTH and is_hashed_form(safe) and WILDCARD.fullmatch(safe)


def test_folder_collision_in_the_index_names_both_ids_and_refuses(tmp_path):
    _case(tmp_path / "dicom" / "a", _grid("CaseA"))
    _case(tmp_path / "dicom" / "b", _grid("casea"))  # one folder on a case-insensitive disk
    _case(tmp_path / "dicom" / "c", _grid("P3"))
    rows = _index(tmp_path / "dicom", tmp_path / "index.tsv")
    hit = [r for r in rows if Problem.PATIENT_ID_COLLISION in r["problem_codes"]]
    assert {r["patient_id"] for r in hit} == {"CaseA", "casea"}
    assert all("'CaseA' and 'casea'" in " ".join(r["problems"]) for r in hit)
    for pid in ("CaseA", "casea"):
        status = _convert_status(tmp_path / "index.tsv", pid, tmp_path / pid)
        assert status["status"] == "excluded" and "'CaseA' and 'casea'" in status["reason"]
    assert _convert_status(tmp_path / "index.tsv", "P3", tmp_path / "P3")["status"] == "ok"


def test_exact_folder_collision_is_caught_too(tmp_path, monkeypatch):
    """A (64-bit) hash collision cannot be built; simulate one to prove the check."""
    import mmfusion.cohort.merge
    import mmfusion.dicom.index

    _case(tmp_path / "a", _grid("ID-1"))
    _case(tmp_path / "b", _grid("ID-2"))
    monkeypatch.setattr(mmfusion.dicom.index, "sanitize_id", lambda pid: "same")
    rows = index_dicom(tmp_path, progress=False)
    assert all(Problem.PATIENT_ID_COLLISION in r["problem_codes"] for r in rows
               if r["patient_id"])
    monkeypatch.setattr(mmfusion.cohort.merge, "sanitize_id", lambda pid: "same")
    frame = pd.DataFrame({"x": [1, 2]}, index=pd.Index(["ID-1", "ID-2"]))
    with pytest.raises(TableError, match="'ID-1' and 'ID-2' map to the same folder"):
        _sanitised_index(frame, "clinical.csv")


def test_empty_patient_id_is_excluded_with_a_reason(tmp_path):
    _case(tmp_path / "dicom" / "nopid", _grid(""))
    _case(tmp_path / "dicom" / "p1", _grid("P1"))
    rows = _index(tmp_path / "dicom", tmp_path / "index.tsv")
    nopid = [r for r in rows if r["patient_id"] == "" and r["modality"] in ("CT", "RTSTRUCT")]
    assert nopid and all(r["patient"] == NO_PATIENT_ID for r in nopid)
    assert all(Problem.NO_PATIENT_ID in r["problem_codes"] for r in nopid)
    assert not any(r["linked_series_uid"] for r in nopid)  # never counted as linked
    assert patients_from_index(tmp_path / "index.tsv") == ["P1"]
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("patient_id,lnm\nP1,1\n")
    out = tmp_path / "results"
    assert main(["cohort", "build", "--clinical", str(clinical), "--index",
                 str(tmp_path / "index.tsv"), "--table", str(out / "table.tsv"), "--spec",
                 str(out / "spec.json"), "--exclusions", str(out / "exclusions.tsv"),
                 "--cohort-settings", json.dumps({"label_column": "lnm"})]) == 0
    excl = pd.read_csv(out / "exclusions.tsv", sep="\t").set_index("patient_id")
    assert excl.loc[NO_PATIENT_ID, "stage"] == "index"
    assert "without a PatientID" in excl.loc[NO_PATIENT_ID, "reason"]
    with pytest.raises(DicomError, match="no DICOM object of this patient"):
        inputs_from_index(tmp_path / "index.tsv", NO_PATIENT_ID, SETTINGS)


# --------------------------------------------------------------------------- 2. RTSTRUCT

@pytest.mark.parametrize("bad", ["NaN", "inf", "-inf"])
def test_non_finite_contour_data_excludes_the_patient_with_a_status(tmp_path, bad):
    _case(tmp_path / "dicom" / "p1", _grid("P1"))
    _case(tmp_path / "dicom" / "p2", _grid("P2"))
    _edit_contour(tmp_path / "dicom" / "p1" / "rs.dcm", lambda v: [v[0], bad, *v[2:]])
    rows = _index(tmp_path / "dicom", tmp_path / "index.tsv")
    rs = next(r for r in rows if r["patient_id"] == "P1" and r["modality"] == "RTSTRUCT")
    assert Problem.BAD_CONTOUR_DATA in rs["problem_codes"]
    status = _convert_status(tmp_path / "index.tsv", "P1", tmp_path / "out1")
    assert status["status"] == "excluded"
    assert "NaN or infinite" in status["reason"] and "p1/rs.dcm" in status["reason"]
    assert "'GTV-T'" in status["reason"] and "P1" in status["reason"]
    assert not (tmp_path / "out1" / "gtv_t.nii.gz").exists()
    assert _convert_status(tmp_path / "index.tsv", "P2", tmp_path / "out2")["status"] == "ok"


def test_non_numeric_contour_data_is_recorded_and_the_index_goes_on(tmp_path):
    _case(tmp_path / "dicom" / "p1", _grid("P1"))
    _case(tmp_path / "dicom" / "p2", _grid("P2"))
    _edit_contour(tmp_path / "dicom" / "p1" / "rs.dcm", lambda v: ["abc", *v[1:]])
    rows = _index(tmp_path / "dicom", tmp_path / "index.tsv")
    rs = {r["patient_id"]: r for r in rows if r["modality"] == "RTSTRUCT"}
    assert Problem.BAD_CONTOUR_DATA in rs["P1"]["problem_codes"]
    assert "non-numeric ContourData" in " ".join(rs["P1"]["problems"])
    assert rs["P2"]["linked_series_uid"] and not rs["P2"]["problems"]
    status = _convert_status(tmp_path / "index.tsv", "P1", tmp_path / "out1")
    assert status["status"] == "excluded" and "non-numeric ContourData" in status["reason"]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7, 0.9])
def test_truncated_rtstruct_is_recorded_and_excluded(tmp_path, fraction):
    _case(tmp_path / "dicom" / "p1", _grid("P1"))
    rs_path = tmp_path / "dicom" / "p1" / "rs.dcm"
    data = rs_path.read_bytes()
    rs_path.write_bytes(data[: int(len(data) * fraction)])
    rows = _index(tmp_path / "dicom", tmp_path / "index.tsv")
    rs = next(r for r in rows if r["modality"] == "RTSTRUCT")
    assert Problem.TRUNCATED in rs["problem_codes"]
    status = _convert_status(tmp_path / "index.tsv", "P1", tmp_path / "out")
    assert status["status"] == "excluded"
    assert "truncated" in status["reason"] and "file p1/rs.dcm]" in status["reason"]
    # without the index's word for it, parsing refuses too (no AttributeError)
    with pytest.raises(DicomError, match="truncated RTSTRUCT"):
        parse_rtstruct(rs_path, patient="P1")


def test_malformed_rtstruct_is_refused_not_an_attribute_error(tmp_path):
    _case(tmp_path)
    ds = pydicom.dcmread(tmp_path / "rs.dcm")
    del ds.ROIContourSequence[0].ReferencedROINumber
    ds.save_as(tmp_path / "rs.dcm")
    rs = next(r for r in index_dicom(tmp_path, progress=False) if r["modality"] == "RTSTRUCT")
    assert Problem.MALFORMED_RTSTRUCT in rs["problem_codes"]
    with pytest.raises(DicomError, match="damaged RTSTRUCT.*ReferencedROINumber"):
        inputs_from_folder(tmp_path, SETTINGS)
    with pytest.raises(DicomError, match="malformed RTSTRUCT.*ReferencedROINumber"):
        parse_rtstruct(tmp_path / "rs.dcm", patient="PAT001")


@pytest.mark.parametrize("item", [1, 2])
def test_garbled_contour_item_header_is_refused_not_half_read(tmp_path, item):
    """A garbled item header swallows the contours after it: refused, not a smaller GTV."""
    _case(tmp_path)
    path = tmp_path / "rs.dcm"
    raw = bytearray(path.read_bytes())
    at = -1
    for _ in range(item + 1):
        at = raw.index(b"\x06\x30\x42\x00CS", at + 1)  # ContourGeometricType of item
    raw[at - 8:at] = b"\xa5" * 8  # the item's tag and length
    path.write_bytes(bytes(raw))
    with pytest.raises(DicomError, match="RTSTRUCT"):
        convert_patient(inputs_from_folder(tmp_path, SETTINGS), tmp_path / "out", SETTINGS)


def test_bad_contour_data_in_an_unused_roi_is_a_warning(tmp_path):
    grid = _grid()
    _case(tmp_path, grid, rois={"GTV-T": sphere_contours(grid, (8.0, 8.0), 3.5, 4.0),
                                "Body": sphere_contours(grid, (8.0, 8.0), 3.5, 6.0)})
    _edit_contour(tmp_path / "rs.dcm", lambda v: ["NaN", *v[1:]], roi=1)
    summary = convert_patient(inputs_from_folder(tmp_path, SETTINGS), tmp_path / "out", SETTINGS)
    assert summary["tumour"]["voxels"] > 0
    assert any("'Body' (not used)" in w and "NaN" in w for w in summary["warnings"])


def test_rasteriser_ignores_non_finite_points():
    pts = circle(_grid(), (8.0, 8.0), 3.0, 2)
    pts[0, 0] = np.nan
    mask, report = rasterise_roi([Contour("CLOSED_PLANAR", pts)], (8, 16, 16),
                                 np.array([-24.0, -20.0, -20.0]), (1.0, 1.0, 2.0), np.eye(3))
    assert not mask.any() and report.degenerate == 1


# --------------------------------------------------------------------------- 3. corrupt slices

def _corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "empty":
        raw = bytearray()
    elif how == "header_cut":
        raw = raw[:300]
    elif how == "cut_before_modality":  # ends cleanly after SOPInstanceUID
        raw = raw[:raw.index(b"\x08\x00\x60\x00CS")]
    elif how == "garbled_uid":  # same length, so only the SeriesInstanceUID is damaged
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.SeriesInstanceUID).encode()
        at = raw.find(uid)
        raw[at + 10:at + 20] = b"\xa5" * 10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("which", [0, 3, -1])
@pytest.mark.parametrize("how", ["empty", "header_cut", "cut_before_modality", "garbled_uid"])
def test_corrupt_slice_is_named_and_the_series_refused(tmp_path, which, how):
    files = _case(tmp_path)
    _corrupt(files[which], how)
    (tmp_path / "ct" / "DICOMDIR.bak").write_bytes(b"\0" * 300)  # a stray file is no reason
    rows = index_dicom(tmp_path, progress=False)
    bad = [r for r in rows if r["modality"] == "UNREADABLE"]
    assert [r["files"] for r in bad] == [[f"ct/{files[which].name}"]]
    ct = [r for r in rows if r["modality"] == "CT" and r["n_files"] > 1]
    assert len(ct) == 1 and Problem.UNREADABLE_IN_SERIES_FOLDER in ct[0]["problem_codes"]
    with pytest.raises(DicomError, match="damaged slice") as err:
        inputs_from_folder(tmp_path, SETTINGS)
    text = str(err.value)
    assert f"file ct/{files[which].name}]" in text and "patient PAT001" in text
    assert "damaged slice" in text and "\n" not in text


@pytest.mark.parametrize("which", [0, -1])
@pytest.mark.parametrize("field", ["SeriesInstanceUID", "Modality", "PatientID"])
def test_slice_split_off_by_one_changed_byte_is_named_and_refused(tmp_path, which, field):
    """One flipped byte turns the end slice into a lone slice of another series, modality
    or patient: without a word, the volume would be one slice short."""
    files = _case(tmp_path)
    ds = pydicom.dcmread(files[which])
    value = str(ds.data_element(field).value)
    with warnings.catch_warnings():  # pydicom warns about the invalid UID we want
        warnings.simplefilter("ignore")
        setattr(ds, field, value[:-1] + chr(ord(value[-1]) + 1))
        ds.save_as(files[which])
    rows = index_dicom(tmp_path, progress=False)
    ct = [r for r in rows if r["modality"] == "CT" and r["n_files"] > 1]
    assert len(ct) == 1 and Problem.STRAY_SLICE in ct[0]["problem_codes"]
    assert f"ct/{files[which].name}" in " ".join(ct[0]["problems"])
    with pytest.raises(DicomError, match="patient PAT001") as err:
        select_inputs(rows, "PAT001", SETTINGS)
    assert f"file ct/{files[which].name}]" in str(err.value)
    assert "patient PAT001" in str(err.value)


def test_a_second_reconstruction_in_the_folder_is_no_stray_slice(tmp_path):
    grid = _grid()
    _case(tmp_path, grid)
    write_ct(tmp_path / "ct", _grid(study_uid=grid.study_uid, for_uid=grid.for_uid,
                                    shape=(9, 16, 16)), shuffle_names=False)  # overwrites
    single = _grid(study_uid=grid.study_uid, for_uid=grid.for_uid, shape=(1, 16, 16),
                   origin=(-24.0, -20.0, -20.0 + 8 * 2.0), row_dir=(0.0, 1.0, 0.0),
                   col_dir=(0.0, 0.0, 1.0))  # a sagittal scout where slice 8 would be
    for path in write_ct(tmp_path / "scout", single):
        path.rename(tmp_path / "ct" / f"scout_{path.name}")
    inside = _grid(study_uid=grid.study_uid, for_uid=grid.for_uid, shape=(1, 16, 16),
                   origin=(-24.0, -20.0, -20.0 + 3 * 2.0))  # a lone slice within the range
    for path in write_ct(tmp_path / "key", inside):
        path.rename(tmp_path / "ct" / f"key_{path.name}")
    rows = index_dicom(tmp_path, progress=False)
    assert not any(Problem.STRAY_SLICE in r["problem_codes"] for r in rows)
    assert len([r for r in rows if r["modality"] == "CT"]) == 3


def test_stray_non_dicom_files_beside_slices_are_no_reason(tmp_path):
    _case(tmp_path)
    (tmp_path / "ct" / "DICOMDIR.bak").write_bytes(b"\0" * 300)
    (tmp_path / "ct" / "notes.txt").write_text("exported by PACS")
    summary = convert_patient(inputs_from_folder(tmp_path, SETTINGS), tmp_path / "out", SETTINGS)
    assert summary["ct"]["n_files"] == 8


# --------------------------------------------------------------------------- 4. JPEG 2000

def test_garbage_jpeg2000_slice_is_one_line_naming_the_file(tmp_path):
    from pydicom.encaps import encapsulate

    files = _case(tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"garbage" * 20])
    ds["PixelData"].VR = "OB"
    ds.save_as(files[2])
    line = _one_line_error(_run("convert", str(tmp_path), "--out", str(tmp_path / "out")))
    assert f"file ct/{files[2].name}" in line and "cannot read pixel data" in line


# --------------------------------------------------------------------------- 5. tables

TABLES = TableSettings.from_config({"label_column": "lnm"},
                                   {"clinical": {"numeric": ["age"]}})


@pytest.mark.parametrize("value", ["inf", "-Infinity", "1e999"])
def test_infinite_number_in_a_table_names_file_column_and_patient(tmp_path, value):
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(f"patient_id,lnm,age\nP1,1,60\nP2,0,{value}\n")
    with pytest.raises(TableError, match="infinite") as err:
        read_tables(clinical, None, TABLES)
    text = str(err.value)
    assert "patient P2" in text and str(clinical) in text and "column age" in text
    assert "infinite" in text and "line(s) [3]" in text


@pytest.mark.parametrize("content", ["", "patient_id,lnm,age\n"])
def test_empty_clinical_file_is_a_one_line_error(tmp_path, content):
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(content)
    with pytest.raises(TableError, match="empty|no rows"):
        read_table(clinical)
    out = tmp_path / "out"
    line = _one_line_error(_run(
        "cohort", "build", "--clinical", str(clinical), "--table", str(out / "t.tsv"),
        "--spec", str(out / "s.json"), "--exclusions", str(out / "e.tsv"),
        "--cohort-settings", json.dumps({"label_column": "lnm"})))
    assert str(clinical) in line


def test_infinite_radiomics_value_names_file_column_and_patient(tmp_path):
    path = tmp_path / "P1" / "radiomics.tsv"
    path.parent.mkdir()
    path.write_text("patient_id\tgtvt_original_firstorder_Mean\tgtvn_present\nP1\tinf\t1\n")
    with pytest.raises(TableError, match="gtvt_original_firstorder_Mean") as err:
        read_radiomics_rows([path])
    text = str(err.value)
    assert "patient P1" in text and str(path) in text and "gtvt_original_firstorder_Mean" in text
    path.write_text("")
    with pytest.raises(TableError, match="empty radiomics"):
        read_radiomics_rows([path])


# --------------------------------------------------------------------------- 6. ROI regexes

@pytest.mark.parametrize("key, pattern", [("tumour", "GTV-T("), ("node", "[GTV-N")])
def test_invalid_roi_regex_is_a_config_error(tmp_path, key, pattern):
    with pytest.raises(ConfigError, match=rf"rois\.{key} is not a valid regular expression: "):
        ConvertSettings.from_config({key: pattern})
    with pytest.raises(ConfigError, match=rf"rois\.{key}"):
        ConvertSettings(**{key: pattern})
    _case(tmp_path)
    option = "--tumour-roi" if key == "tumour" else "--node-roi"
    line = _one_line_error(_run("convert", str(tmp_path), "--out", str(tmp_path / "out"),
                                option, pattern))
    assert f"rois.{key}" in line


# --------------------------------------------------------------------------- 7. field of view

def test_contour_outside_the_field_of_view_is_its_own_outcome(tmp_path):
    grid = _grid()
    origin, spacing = np.asarray(grid.origin), grid.spacing
    outside = Contour("CLOSED_PLANAR", circle(grid, (200.0, 8.0), 3.0, 2))
    partial = Contour("CLOSED_PLANAR", circle(grid, (15.0, 8.0), 3.0, 2))
    _, report = rasterise_roi([outside], grid.shape, origin, spacing, np.eye(3))
    assert (report.outside_fov, report.clipped, report.rasterised) == (1, 0, 0)
    assert any("entirely outside the CT field of view" in w for w in report.warnings("X"))
    assert not any("clipped" in w for w in report.warnings("X"))
    _, report = rasterise_roi([partial], grid.shape, origin, spacing, np.eye(3))
    assert (report.outside_fov, report.clipped) == (0, 1)
    _case(tmp_path, grid, rois={"GTV-T": sphere_contours(grid, (8.0, 8.0), 3.5, 4.0),
                                "GTV-N": sphere_contours(grid, (200.0, 8.0), 3.5, 4.0)})
    summary = convert_patient(inputs_from_folder(tmp_path, SETTINGS), tmp_path / "out", SETTINGS)
    node = summary["roi_reports"]["GTV-N"]
    assert node["outside_fov"] == node["contours"] > 0 and node["clipped"] == 0
    written = json.loads((tmp_path / "out" / "rois.json").read_text())
    assert written["roi_reports"]["GTV-N"]["outside_fov"] == node["outside_fov"]


def test_index_tsv_round_trips_the_new_codes(tmp_path):
    _case(tmp_path / "p")
    (tmp_path / "p" / "ct" / "img_9999.dcm").write_bytes(b"")
    rows = index_dicom(tmp_path, progress=False)
    write_index(rows, tmp_path / "index.tsv")
    back = read_index(tmp_path / "index.tsv")
    assert [r["problem_codes"] for r in back] == [r["problem_codes"] for r in rows]


# --------------------------------------------------------------------------- damage sweeps

def _outcome(root: Path, out: Path) -> str:
    """'ok <n slices> <tumour voxels>' or 'refused' (a one-line DicomError); anything
    else (another exception) fails the test."""
    try:
        summary = convert_patient(inputs_from_folder(root, SETTINGS), out, SETTINGS)
    except DicomError as err:
        assert "\n" not in str(err)
        return "refused"
    return f"ok {summary['ct']['size_xyz'][2]} {summary['tumour']['voxels']}"


@pytest.mark.parametrize("mode", ["cut", "garble"])
def test_damaged_first_or_last_slice_never_shortens_the_volume(tmp_path, mode):
    """Cut or overwrite the first/last slice at offsets across its header: the patient is
    converted whole (the damage hit an unused value) or refused; never one slice short."""
    files = _case(tmp_path / "p")
    clean = _outcome(tmp_path / "p", tmp_path / "out")
    assert clean.startswith("ok 8 ")
    size = files[0].stat().st_size
    header = size - 16 * 16 * 2
    for which in (0, -1):
        original = files[which].read_bytes()
        for offset in range(132, header, 29):
            raw = bytearray(original)
            if mode == "cut":
                raw = raw[:offset]
            else:
                raw[offset:offset + 12] = b"\xa5" * 12
            files[which].write_bytes(bytes(raw))
            outcome = _outcome(tmp_path / "p", tmp_path / "out")
            assert outcome in ("refused", clean), (which, offset, outcome)
        files[which].write_bytes(original)


@pytest.mark.parametrize("mode", ["cut", "garble"])
def test_damaged_rtstruct_is_never_half_read(tmp_path, mode):
    """Cut or overwrite the RTSTRUCT at offsets across the file: the same tumour, or a
    refusal; never a traceback or a tumour built from part of the contours."""
    _case(tmp_path / "p")
    path = tmp_path / "p" / "rs.dcm"
    clean = _outcome(tmp_path / "p", tmp_path / "out")
    original = path.read_bytes()
    for offset in range(140, len(original), len(original) // 60):
        raw = bytearray(original)
        if mode == "cut":
            raw = raw[:offset]
        else:
            raw[offset:offset + 8] = b"\xa5" * 8
        path.write_bytes(bytes(raw))
        outcome = _outcome(tmp_path / "p", tmp_path / "out")
        assert outcome in ("refused", clean), (offset, outcome)
