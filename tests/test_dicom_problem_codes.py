"""Index problems as codes: one code per message, and convert decides on codes, not wording."""

from __future__ import annotations

import ast
import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import mmfusion.dicom
from mmfusion.dicom.convert import ConvertSettings, inputs_from_index
from mmfusion.dicom.index import index_dicom
from mmfusion.dicom.index_io import COLUMNS, read_index, write_index
from mmfusion.dicom.problems import Problem
from mmfusion.errors import DicomError
from tests.dicom_fixtures import (
    CTGrid,
    _base,
    oblique_grid,
    sphere_contours,
    write_ct,
    write_rtstruct,
    write_seg,
)

SETTINGS = ConvertSettings()


def _grid(pid: str, **kwargs) -> CTGrid:
    return CTGrid(patient_id=pid, shape=kwargs.pop("shape", (6, 16, 16)), **kwargs)


def _case(root: Path, grid: CTGrid, *, centre=(8.0, 8.0), radius=3.0, rs="rs.dcm",
          **rs_kwargs) -> list[Path]:
    files = write_ct(root / "ct", grid)
    write_rtstruct(root / rs, grid, {"GTV-T": sphere_contours(grid, centre, 3, radius)},
                   **rs_kwargs)
    return files


def _edit(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def _edit_contour(path: Path, change) -> None:
    """Rewrite, in the file's bytes, the first ContourData with `change(values as strings)`
    (same length, space-padded: pydicom refuses to write the broken values we want)."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x06\x30\x50\x00DS")
    length = int.from_bytes(raw[at + 6:at + 8], "little")
    values = bytes(raw[at + 8:at + 8 + length]).decode().strip().split("\\")
    new = "\\".join(change(values)).encode()
    raw[at + 8:at + 8 + length] = new.ljust(length)
    path.write_bytes(bytes(raw))


def _messy_tree(root: Path) -> None:
    """One case per kind of problem the index records."""
    _case(root / "shared_a", _grid("SHARED"))
    _case(root / "shared_b", _grid("SHARED", patient_name="Roe^R", birth_date="19611111"))
    _case(root / "formis", _grid("FORMIS"), for_uid="1.2.826.0.1.99")
    _case(root / "absent", _grid("ABSENT"), referenced_series="1.2.3.4.5", for_uid="1.2.3.9")
    files = _case(root / "trunc", _grid("TRUNC"))
    files[2].write_bytes(files[2].read_bytes()[:-100])
    (root / "notes.txt").write_text("not DICOM")
    (root / "dangling.dcm").symlink_to(root / "nowhere.dcm")  # unreadable
    nomod = Dataset()  # no Modality, no SOPClassUID (like a DICOMDIR)
    nomod.PatientID = "X"
    nomod.file_meta = FileMetaDataset()
    nomod.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    nomod.save_as(root / "DICOMDIR", enforce_file_format=False)  # (a `.dcm` name: damaged)
    g = _grid("TWOFIT")
    _case(root / "twofit", g, referenced_series=None)
    write_ct(root / "twofit" / "ct2", _grid("TWOFIT", for_uid=g.for_uid, study_uid=g.study_uid))
    files = _case(root / "dup", _grid("DUP"))
    shutil.copy(files[1], root / "dup" / "ct" / "copy.dcm")
    _case(root / "single", _grid("SINGLE", shape=(1, 16, 16)))
    _case(root / "oblique", oblique_grid(patient_id="OBL", shape=(6, 16, 16)))
    _case(root / "nopid", _grid(""))
    files = _case(root / "nogeom", _grid("NOGEOM"))
    _edit(files[0], ImagePositionPatient=None)
    files = _case(root / "uneven", _grid("UNEVEN"))
    z = float(pydicom.dcmread(files[0]).ImagePositionPatient[2])
    _edit(files[0], ImagePositionPatient=[-24.0, -20.0, z + 0.7])
    g = _grid("SIZES")
    _case(root / "sizes", g)
    write_ct(root / "sizes" / "extra", _grid("SIZES", series_uid=g.series_uid, for_uid=g.for_uid,
                                            study_uid=g.study_uid, shape=(1, 16, 20)))
    for f in _case(root / "mr", _grid("MR")):
        _edit(f, Modality="MR")
    files = _case(root / "fors", _grid("FORS"))
    _edit(files[3], FrameOfReferenceUID=generate_uid())
    owner = _grid("OWNER")
    write_ct(root / "other" / "ct", owner)
    thief = _grid("THIEF", series_uid=owner.series_uid)
    write_rtstruct(root / "other" / "rs.dcm", thief,
                   {"GTV-T": sphere_contours(thief, (8.0, 8.0), 3, 3.0)})
    _case(root / "beyond", _grid("BEYOND"), centre=(14.0, 8.0), radius=6.0,
          referenced_series=None)
    _case(root / "nofit", _grid("NOFIT"), referenced_series=None, for_uid="1.2.3.777")
    # hostile inputs (tests/test_hostile_inputs.py): codes added for them
    _case(root / "nan", _grid("NANCD"))
    _edit_contour(root / "nan" / "rs.dcm", lambda values: ["NaN", *values[1:]])
    _case(root / "malformed", _grid("MALFORMED"))
    ds = pydicom.dcmread(root / "malformed" / "rs.dcm")
    del ds.ROIContourSequence[0].ReferencedROINumber
    ds.save_as(root / "malformed" / "rs.dcm")
    _case(root / "damaged", _grid("DAMAGED"))
    (root / "damaged" / "ct" / "img_9999.dcm").write_bytes(b"")  # a lost slice
    files = _case(root / "stray", _grid("STRAY"))
    _edit(files[-1], SeriesInstanceUID=generate_uid())  # a damaged UID splits a slice off
    _case(root / "case_a", _grid("CaseA"))
    _case(root / "case_b", _grid("casea"))
    plan = _base(root / "plan.dcm", "1.2.840.10008.5.1.4.1.1.481.5", generate_uid(),
                 _grid("PLAN"), "RTPLAN")
    plan.save_as(root / "plan.dcm", enforce_file_format=True)
    seg_grid = _grid("BADSEG")  # a DICOM-SEG without its SegmentSequence
    seg = write_seg(root / "badseg" / "seg.dcm", write_ct(root / "badseg" / "ct", seg_grid),
                    {"GTV-T": np.ones(seg_grid.shape, bool)})
    ds = pydicom.dcmread(seg)
    del ds.SegmentSequence
    ds.save_as(seg)


# --------------------------------------------------------------------------- (a) one code each

def test_every_index_message_has_exactly_one_code(tmp_path):
    _messy_tree(tmp_path / "dicom")
    rows = index_dicom(tmp_path / "dicom", progress=False)
    for row in rows:
        assert len(row["problem_codes"]) == len(row["problems"]), row
        assert all(isinstance(c, Problem) for c in row["problem_codes"])
    seen = {c for r in rows for c in r["problem_codes"]}
    assert seen == set(Problem), f"no case for {set(Problem) - seen}"
    # A few messages and their codes, as convert and users rely on them.
    pairs = {(c, p.split(":")[0]) for r in rows for c, p in zip(r["problem_codes"],
                                                               r["problems"], strict=True)}
    assert (Problem.FOR_MISMATCH, "Frame of Reference mismatch") in pairs
    assert (Problem.NOT_DICOM, "not a DICOM file") in pairs
    assert any(c == Problem.SHARED_PATIENT_ID and "shared by 2 different patients" in p
               for c, p in pairs)
    # The TSV keeps them in step: the same codes and messages come back.
    out = tmp_path / "index.tsv"
    write_index(rows, out)
    assert open(out).readline().rstrip("\n").split("\t") == COLUMNS
    back = read_index(out)
    assert [(r["problems"], r["problem_codes"]) for r in back] == \
        [(r["problems"], r["problem_codes"]) for r in rows]


def test_a_pipe_in_a_message_keeps_one_code_per_message(tmp_path):
    _case(tmp_path / "p", _grid("P1"))
    (tmp_path / "p" / "a | b.dcm").symlink_to(tmp_path / "nowhere | else.dcm")
    rows = index_dicom(tmp_path / "p", progress=False)
    bad = next(r for r in rows if r["modality"] == "UNREADABLE")
    assert bad["problem_codes"] == [Problem.UNREADABLE] and len(bad["problems"]) == 1
    write_index(rows, tmp_path / "index.tsv")
    back = next(r for r in read_index(tmp_path / "index.tsv") if r["modality"] == "UNREADABLE")
    assert back["problem_codes"] == [Problem.UNREADABLE] and back["problems"] == bad["problems"]


def test_no_problem_is_recorded_without_its_code():
    """Statically: the index modules only record problems through `add_problem(row, code, ...)`."""
    folder = Path(mmfusion.dicom.__file__).parent
    for name in ("index.py", "headers.py", "series_geometry.py", "linking.py"):
        tree = ast.parse((folder / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and node.slice.value in ("problems", "problem_codes") \
                    and isinstance(node.ctx, ast.Load):
                parent_attr = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                               and n.value is node and n.attr in ("append", "extend")]
                assert not parent_attr, f"{name}:{node.lineno} appends a problem without code"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "add_problem":
                assert len(node.args) == 3, f"{name}:{node.lineno}"


def _raw(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        return list(reader.fieldnames), list(reader)


def _write_raw(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, header, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _indexed(root: Path) -> Path:
    out = root.parent / f"{root.name}_index.tsv"
    write_index(index_dicom(root, progress=False), out)
    return out


def test_read_index_refuses_an_index_without_codes(tmp_path):
    _case(tmp_path / "p", _grid("P1"))
    index = _indexed(tmp_path / "p")
    header, rows = _raw(index)
    old = [h for h in header if h != "problem_codes"]
    _write_raw(index, old, [{k: r[k] for k in old} for r in rows])
    with pytest.raises(DicomError, match="no problem_codes column.*re-run `mmfusion index`"):
        read_index(index)


@pytest.mark.parametrize("codes, error", [("bogus_code", "bogus_code"),
                                          ("", "1 problem message.* but 0 problem code")])
def test_read_index_refuses_codes_out_of_step(tmp_path, codes, error):
    _case(tmp_path / "p", _grid("P1"), for_uid="1.2.826.0.1.99")
    index = _indexed(tmp_path / "p")
    header, rows = _raw(index)
    for row in rows:
        if row["problem_codes"]:
            row["problem_codes"] = codes
    _write_raw(index, header, rows)
    with pytest.raises(DicomError, match=error):
        read_index(index)


# --------------------------------------------------------------------------- (b) convert

def _rewrite(index: Path, code: str, *, message: str | None = None,
             new_code: str | None = None) -> None:
    """In every row, give the problem with `code` another message and/or another code."""
    header, rows = _raw(index)
    for row in rows:
        codes = [c for c in row["problem_codes"].split(" | ") if c]
        texts = [p for p in row["problems"].split(" | ") if p]
        for i, c in enumerate(codes):
            if c == code:
                texts[i] = message if message is not None else texts[i]
                codes[i] = new_code if new_code is not None else codes[i]
        row["problem_codes"], row["problems"] = " | ".join(codes), " | ".join(texts)
    _write_raw(index, header, rows)


def _add(index: Path, where, code: Problem, message: str) -> None:
    """Append a problem (`message`, `code`) to the rows for which `where(row)` holds."""
    header, rows = _raw(index)
    for row in rows:
        if where(row):
            row["problems"] = " | ".join(p for p in (row["problems"], message) if p)
            row["problem_codes"] = " | ".join(c for c in (row["problem_codes"], code) if c)
    _write_raw(index, header, rows)


@pytest.fixture()
def shared_index(tmp_path) -> Path:
    _case(tmp_path / "dicom" / "a", _grid("PAT001"))
    _case(tmp_path / "dicom" / "b", _grid("PAT001", patient_name="Roe^R",
                                          birth_date="19611111"))
    return _indexed(tmp_path / "dicom")


def test_shared_patient_id_refusal_ignores_the_wording(shared_index):
    with pytest.raises(DicomError, match="shared by 2 different patients"):
        inputs_from_index(shared_index, "PAT001", SETTINGS)
    _rewrite(shared_index, "shared_patient_id", message="two people, one ID")
    with pytest.raises(DicomError, match="two people, one ID"):
        inputs_from_index(shared_index, "PAT001", SETTINGS)


def test_shared_patient_id_refusal_follows_the_code(shared_index, tmp_path):
    # The old message text under another code no longer refuses ...
    _rewrite(shared_index, "shared_patient_id", new_code="several_fitting_series")
    assert "shared by" in shared_index.read_text()
    inputs = inputs_from_index(shared_index, "PAT001", SETTINGS)
    assert inputs.patient_id == "PAT001" and inputs.ct_files
    # ... and the code under any wording refuses a patient that was fine.
    _case(tmp_path / "clean", _grid("P2"))
    clean = _indexed(tmp_path / "clean")
    assert inputs_from_index(clean, "P2", SETTINGS).ct_files
    _add(clean, lambda r: r["modality"] == "CT", Problem.SHARED_PATIENT_ID,
         "odd wording")
    with pytest.raises(DicomError, match="odd wording"):
        inputs_from_index(clean, "P2", SETTINGS)


@pytest.fixture()
def mismatch_index(tmp_path) -> Path:
    _case(tmp_path / "dicom", _grid("PAT001"), for_uid="1.2.826.0.1.99")
    return _indexed(tmp_path / "dicom")


def test_for_mismatch_refusal_ignores_the_wording(mismatch_index):
    with pytest.raises(DicomError, match="Frame of Reference mismatch"):
        inputs_from_index(mismatch_index, "PAT001", SETTINGS)
    _rewrite(mismatch_index, "for_mismatch", message="FoR differs")
    with pytest.raises(DicomError, match="FoR differs"):
        inputs_from_index(mismatch_index, "PAT001", SETTINGS)


def test_for_mismatch_refusal_follows_the_code(mismatch_index):
    _rewrite(mismatch_index, "for_mismatch", new_code="contours_beyond_series")
    inputs = inputs_from_index(mismatch_index, "PAT001", SETTINGS)
    assert inputs.rtstruct.endswith("rs.dcm")
    assert any("Frame of Reference mismatch" in w for w in inputs.warnings)


@pytest.fixture()
def two_rtstructs_index(tmp_path) -> Path:
    """A newer RTSTRUCT with a Frame of Reference mismatch and an older consistent one."""
    grid = _grid("PAT001")
    _case(tmp_path / "dicom", grid, rs="old.dcm")
    new = write_rtstruct(tmp_path / "dicom" / "new.dcm", grid,
                         {"GTV-T": sphere_contours(grid, (8.0, 8.0), 3, 3.0)},
                         for_uid="1.2.826.0.1.99")
    _edit(new, StructureSetDate="20250101")
    return _indexed(tmp_path / "dicom")


def test_for_mismatch_skipping_ignores_the_wording(two_rtstructs_index):
    for wording in (None, "FoR differs"):
        if wording:
            _rewrite(two_rtstructs_index, "for_mismatch", message=wording)
        inputs = inputs_from_index(two_rtstructs_index, "PAT001", SETTINGS)
        assert inputs.rtstruct.endswith("old.dcm")
        assert any("Frame of Reference mismatch skipped" in w for w in inputs.warnings)


def test_for_mismatch_skipping_follows_the_code(two_rtstructs_index):
    _rewrite(two_rtstructs_index, "for_mismatch", new_code="contours_beyond_series")
    inputs = inputs_from_index(two_rtstructs_index, "PAT001", SETTINGS)
    assert inputs.rtstruct.endswith("new.dcm")  # the newest, no longer skipped
    assert not any("skipped" in w for w in inputs.warnings)
    # Flag the older one instead, by code alone (any wording): now it is the one skipped.
    _add(two_rtstructs_index, lambda r: "old.dcm" in r["files"], Problem.FOR_MISMATCH,
         "odd wording")
    inputs = inputs_from_index(two_rtstructs_index, "PAT001", SETTINGS)
    assert inputs.rtstruct.endswith("new.dcm")
    assert any("1 RTSTRUCT(s) with a Frame of Reference mismatch skipped" in w
               for w in inputs.warnings)


def test_for_mismatch_on_every_rtstruct_refuses(two_rtstructs_index):
    _rewrite(two_rtstructs_index, "for_mismatch", message="FoR differs")
    _add(two_rtstructs_index, lambda r: "old.dcm" in r["files"], Problem.FOR_MISMATCH,
         "odd wording")
    with pytest.raises(DicomError, match="FoR differs"):  # nothing to skip to: the newest
        inputs_from_index(two_rtstructs_index, "PAT001", SETTINGS)
