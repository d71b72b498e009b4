"""Bad input (DESIGN §8): each case refuses with a clear message or is recorded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmfusion.cli import main
from mmfusion.dicom.convert import ConvertSettings, convert_patient, inputs_from_folder
from mmfusion.dicom.index import index_dicom
from mmfusion.dicom.series import load_ct_series
from mmfusion.errors import DicomError
from tests.dicom_fixtures import CTGrid, sphere_contours, write_ct, write_rtstruct

SETTINGS = ConvertSettings()


def _case(root, grid=None, *, rs_kwargs=None, rois=None):
    grid = grid or CTGrid()
    files = write_ct(root / "ct", grid)
    rois = rois if rois is not None else {"GTV-T": sphere_contours(grid, (24.0, 20.0), 10, 8.0)}
    write_rtstruct(root / "rs.dcm", grid, rois, **(rs_kwargs or {}))
    return grid, files


def _convert(folder, out, settings=SETTINGS):
    return convert_patient(inputs_from_folder(folder, settings), out, settings)


def test_truncated_file_is_named(tmp_path):
    _, files = _case(tmp_path)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 500])
    rows = index_dicom(tmp_path, progress=False)
    ct = next(r for r in rows if r["modality"] == "CT")
    assert any("truncated" in p for p in ct["problems"])
    with pytest.raises(DicomError, match="pixel data") as err:
        _convert(tmp_path, tmp_path / "out")
    assert f"ct/{files[3].name}" in str(err.value) and "PAT001" in str(err.value)


def test_non_dicom_files_are_listed_and_skipped(tmp_path):
    _case(tmp_path / "p")
    (tmp_path / "p" / "notes.txt").write_text("not DICOM")
    (tmp_path / "p" / "ct" / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 300)
    rows = index_dicom(tmp_path, progress=False)
    assert sorted(r["files"][0] for r in rows if r["modality"] == "NON-DICOM") == [
        "p/ct/thumb.png", "p/notes.txt"]
    assert _convert(tmp_path / "p", tmp_path / "out")["tumour"]["voxels"] > 0


def test_rtstruct_referencing_absent_series(tmp_path):
    _case(tmp_path, rs_kwargs={"referenced_series": "1.2.3.4.5", "for_uid": "1.2.3.9"})
    rows = index_dicom(tmp_path, progress=False)
    rs = next(r for r in rows if r["modality"] == "RTSTRUCT")
    assert not rs["linked_series_uid"]
    assert any("absent" in p for p in rs["problems"])
    with pytest.raises(DicomError, match="no RTSTRUCT is linked to a CT series.*1.2.3.4.5"):
        _convert(tmp_path, tmp_path / "out")


def test_link_by_frame_of_reference_and_geometry(tmp_path):
    _case(tmp_path, rs_kwargs={"referenced_series": None})
    rows = index_dicom(tmp_path, progress=False)
    rs = next(r for r in rows if r["modality"] == "RTSTRUCT")
    assert rs["link_method"] == "frame_of_reference+geometry"
    assert _convert(tmp_path, tmp_path / "out")["tumour"]["voxels"] > 0


def test_frame_of_reference_mismatch(tmp_path):
    _case(tmp_path, rs_kwargs={"for_uid": "1.2.826.0.1.99"})
    with pytest.raises(DicomError, match="Frame of Reference mismatch"):
        _convert(tmp_path, tmp_path / "out")


def test_roi_regex_matching_nothing_lists_names(tmp_path):
    grid = CTGrid()
    _case(tmp_path, grid, rois={"GTV-1": sphere_contours(grid, (24.0, 20.0), 10, 8.0),
                                "Lung": []})
    with pytest.raises(DicomError, match="rois.tumour.*GTV-1, Lung"):
        _convert(tmp_path, tmp_path / "out")
    settings = ConvertSettings.from_config({"tumour": "GTV-1"})
    assert _convert(tmp_path, tmp_path / "out", settings)["tumour"]["rois"] == ["GTV-1"]


def test_missing_slice(tmp_path):
    _, files = _case(tmp_path)
    geometry_sorted = sorted(files, key=lambda p: load_ct_series([p]).origin[2])
    geometry_sorted[8].unlink()
    with pytest.raises(DicomError, match="missing slice"):
        _convert(tmp_path, tmp_path / "out")


def test_duplicate_slice_identical_is_dropped(tmp_path):
    _, files = _case(tmp_path)
    shutil.copy(files[5], tmp_path / "ct" / "copy.dcm")
    summary = _convert(tmp_path, tmp_path / "out")
    assert summary["ct"]["size_xyz"][2] == 20
    assert any("duplicate slice dropped" in w for w in summary["warnings"])


def test_duplicate_position_with_different_pixels(tmp_path):
    grid = CTGrid()
    files = write_ct(tmp_path / "a", grid)
    other = CTGrid(series_uid=grid.series_uid, for_uid=grid.for_uid, study_uid=grid.study_uid)
    other.shape = (1, *grid.shape[1:])
    extra = write_ct(tmp_path / "b", other, volume=np.full((1, 40, 48), 500.0))
    with pytest.raises(DicomError, match="share one position but differ"):
        load_ct_series([*files, *extra], patient="PAT001")


def test_uneven_spacing(tmp_path):
    grid = CTGrid()
    files = write_ct(tmp_path, grid)
    import pydicom

    # Shift the top slice by 0.5 mm (25% of a 2 mm gap): refused.
    top = max(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(top)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.5
    ds.save_as(top)
    with pytest.raises(DicomError, match="uneven slice spacing"):
        load_ct_series(files)


def test_several_ct_series_take_the_referenced_one(tmp_path):
    grid = CTGrid()
    _case(tmp_path, grid)
    decoy = CTGrid(patient_id=grid.patient_id, study_uid=grid.study_uid, for_uid=grid.for_uid,
                   shape=(5, 40, 48))
    write_ct(tmp_path / "other", decoy)
    summary = _convert(tmp_path, tmp_path / "out")
    assert summary["ct"]["series_uid"] == grid.series_uid
    assert any("other CT series ignored" in w for w in summary["warnings"])


def test_two_patients_sharing_one_patient_id(tmp_path):
    _case(tmp_path / "a")
    _case(tmp_path / "b", CTGrid(patient_name="Roe^Richard", birth_date="19611111"))
    rows = index_dicom(tmp_path, progress=False)
    assert all(any("shared by 2 different patients" in p for p in r["problems"])
               for r in rows if r["modality"] in ("CT", "RTSTRUCT"))
    index = tmp_path / "index.tsv"
    assert main(["index", str(tmp_path), "--out", str(index), "--no-progress"]) == 0
    assert "Doe" not in index.read_text() and "19500101" not in index.read_text()
    status = tmp_path / "status.json"
    assert main(["convert", "--index", str(index), "--patient", "PAT001", "--out",
                 str(tmp_path / "out"), "--status-out", str(status)]) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "excluded" and "shared by" in record["reason"]


def test_several_patient_ids_in_one_folder(tmp_path):
    _case(tmp_path / "a")
    _case(tmp_path / "b", CTGrid(patient_id="PAT002"))
    with pytest.raises(DicomError, match="2 PatientIDs"):
        _convert(tmp_path, tmp_path / "out")


def test_tumour_only_on_absent_slices(tmp_path):
    grid = CTGrid()
    far = CTGrid(origin=(-24.0, -20.0, 100.0))
    _case(tmp_path, grid, rois={"GTV-T": sphere_contours(far, (24.0, 20.0), 10, 8.0)})
    with pytest.raises(DicomError, match="no voxel on this CT series"):
        _convert(tmp_path, tmp_path / "out")


def test_cli_refusal_is_one_line_exit_1(tmp_path, capsys):
    _case(tmp_path, rs_kwargs={"for_uid": "1.2.826.0.1.99"})
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "patient PAT001" in err[0] and "rs.dcm" in err[0]
    assert not (tmp_path / "out" / "ct.nii.gz").exists()


def test_cli_status_ok_and_outputs(tmp_path):
    _case(tmp_path)
    status = tmp_path / "out" / "convert_status.json"
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--status-out", str(status)]) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "ok" and record["patient_id"] == "PAT001"
    for name in ("ct.nii.gz", "gtv_t.nii.gz", "gtv_n.nii.gz", "rois.json"):
        assert (tmp_path / "out" / name).is_file()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes left no temp files


def test_unknown_convert_config_key_fails():
    from mmfusion.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key convert.bogus"):
        ConvertSettings.from_config({}, {"bogus": 1})
