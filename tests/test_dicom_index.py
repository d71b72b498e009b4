"""`mmfusion index`: crawling, parallel header reading, the TSV contract, patient list."""

from __future__ import annotations

import json

import pytest

from mmfusion.cli import main
from mmfusion.dicom.index import (
    COLUMNS,
    build_index,
    index_dicom,
    patients_from_index,
    read_headers,
    read_index,
    write_index,
)
from mmfusion.ids import sanitize_id
from tests.dicom_fixtures import CTGrid, sphere_contours, write_ct, write_rtstruct


def _patient(root, pid, *, with_rs=True, nested="a/b"):
    grid = CTGrid(patient_id=pid, shape=(6, 16, 16))
    write_ct(root / nested / "ct", grid)
    if with_rs:
        write_rtstruct(root / nested / "rs" / "rs.dcm", grid,
                       {"GTV-T": sphere_contours(grid, (8.0, 8.0), 3, 3.0)})
    return grid


def test_index_rows_links_and_patient_list(tmp_path):
    _patient(tmp_path, "P1")
    _patient(tmp_path, "../evil id", nested="x")
    _patient(tmp_path, "P3", with_rs=False, nested="y/z")
    out = tmp_path / "index.tsv"
    assert main(["index", str(tmp_path), "--out", str(out), "--no-progress"]) == 0
    rows = read_index(out)
    header = out.read_text().splitlines()[0].split("\t")
    assert header == COLUMNS
    ct_rows = [r for r in rows if r["modality"] == "CT"]
    assert sorted(r["patient_id"] for r in ct_rows) == ["../evil id", "P1", "P3"]
    assert all(int(r["n_files"]) == 6 and r["n_positions"] == "6" for r in ct_rows)
    rs_rows = [r for r in rows if r["modality"] == "RTSTRUCT"]
    assert all(r["link_method"] == "series_uid" and r["roi_names"] == ["GTV-T"]
               for r in rs_rows)
    patients = patients_from_index(out)
    assert patients == sorted([sanitize_id("../evil id"), "P1"])
    assert all("/" not in p and not p.startswith(".") for p in patients)
    # Never names or birth dates.
    text = out.read_text()
    assert "Doe" not in text and "19500101" not in text


def test_parallel_header_reading_equals_serial(tmp_path):
    for i in range(12):
        _patient(tmp_path, f"P{i:02d}", nested=f"p{i}")
    from mmfusion.dicom.index import iter_files

    files = iter_files(tmp_path)
    assert len(files) > 64  # above the serial threshold
    serial = build_index(read_headers(files, workers=1, progress=False), tmp_path)
    parallel = build_index(read_headers(files, workers=2, progress=False), tmp_path)
    assert serial == parallel


def test_index_roundtrip_and_convert_from_index(tmp_path):
    _patient(tmp_path / "dicom", "P1")
    rows = index_dicom(tmp_path / "dicom", progress=False)
    write_index(rows, tmp_path / "index.tsv")
    back = read_index(tmp_path / "index.tsv")
    assert [r["files"] for r in back] == [r["files"] for r in rows]
    status = tmp_path / "out" / "convert_status.json"
    assert main(["convert", "--index", str(tmp_path / "index.tsv"), "--patient", "P1",
                 "--out", str(tmp_path / "out"), "--status-out", str(status)]) == 0
    assert json.loads(status.read_text())["status"] == "ok"


def test_index_records_no_absolute_path_and_convert_finds_the_root(tmp_path):
    """Files relative to the DICOM root, the root relative to the index's folder; the
    workflow's --dicom-root overrides it; an older index (absolute root) still works."""
    import csv
    import shutil

    root = tmp_path / "archive" / "dicom"
    _patient(root, "P1")
    index = tmp_path / "results" / "index.tsv"
    index.parent.mkdir()
    assert main(["index", str(root), "--out", str(index), "--no-progress"]) == 0
    assert str(tmp_path) not in index.read_text()
    cells = list(csv.DictReader(index.open(), delimiter="\t"))
    assert {c["dicom_root"] for c in cells} == {"../archive/dicom"}
    assert all(not f.startswith("/") for r in read_index(index) for f in r["files"])
    assert {r["dicom_root"] for r in read_index(index)} == {str(root.resolve())}

    def convert(*extra: str) -> dict:
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        assert main(["convert", "--index", str(index), "--patient", "P1", *extra, "--out",
                     str(out), "--status-out", str(out / "convert_status.json")]) == 0
        return json.loads((out / "convert_status.json").read_text())

    assert convert()["status"] == "ok"
    moved = tmp_path / "moved" / "deeper" / "index.tsv"
    moved.parent.mkdir(parents=True)
    shutil.copy(index, moved)
    index = moved  # the recorded relative root now points nowhere: a config error
    assert main(["convert", "--index", str(index), "--patient", "P1", "--out",
                 str(tmp_path / "out"), "--status-out", str(tmp_path / "s.json")]) == 1
    assert not (tmp_path / "s.json").exists()  # not an exclusion of the patient
    assert convert("--dicom-root", str(root))["status"] == "ok"
    legacy = index.read_text().replace("../archive/dicom", str(root))
    index.write_text(legacy)  # as written before roots were recorded relatively
    assert convert()["status"] == "ok"


def test_read_index_rejects_other_tables(tmp_path):
    from mmfusion.errors import DicomError

    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(DicomError, match="not a DICOM index"):
        read_index(tmp_path / "x.tsv")


def test_index_missing_root(tmp_path):
    assert main(["index", str(tmp_path / "nope"), "--out", str(tmp_path / "i.tsv")]) == 1


@pytest.mark.slow
def test_demo_cohort_index_and_convert_every_patient(tiny_cohort, tmp_path):
    """The synthetic demo cohort: every patient is listed and converts with GTV-T/GTV-N."""
    out = tmp_path / "index.tsv"
    assert main(["index", str(tiny_cohort / "dicom"), "--out", str(out),
                 "--no-progress"]) == 0
    patients = patients_from_index(out)
    assert len(patients) == 3
    for patient in patients:
        folder = tmp_path / patient
        status = folder / "convert_status.json"
        assert main(["convert", "--index", str(out), "--patient", patient, "--out",
                     str(folder), "--status-out", str(status)]) == 0
        record = json.loads(status.read_text())
        assert record["status"] == "ok", record["reason"]
        summary = json.loads((folder / "rois.json").read_text())
        assert summary["tumour"]["voxels"] > 0
