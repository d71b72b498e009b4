"""Bounded fuzzing of ingest: byte and value mutations of a real CT slice and a real
RTSTRUCT (from the synthetic cohort) through `index` and `convert`. Every outcome must be a
clean error (an MMFusionError, which the CLI prints as one line) or a valid volume with the
series' full shape: never another exception, never a silently shorter volume.

Derandomised (same examples every run, so CI is not flaky) and bounded to about a minute.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfusion.dicom.convert import ConvertSettings, convert_patient, select_inputs
from mmfusion.dicom.index import index_dicom
from mmfusion.errors import MMFusionError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SETTINGS = ConvertSettings.from_config({}, {})


@pytest.fixture(scope="module")
def patient(tiny_cohort: Path) -> dict:
    """One patient's folder, its middle CT slice, its RTSTRUCT and the clean volume shape."""
    folder = sorted((tiny_cohort / "dicom").iterdir())[0]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    cts, rts = [], None
    for path in files:
        modality = pydicom.dcmread(path, stop_before_pixels=True).Modality
        if modality == "CT":
            cts.append(path)
        elif modality == "RTSTRUCT":
            rts = path
    with tempfile.TemporaryDirectory() as tmp:
        summary, shape = _ingest(folder, Path(tmp))
    assert summary is not None, "the clean patient must convert"
    return {"folder": folder, "ct": sorted(cts)[len(cts) // 2], "first_ct": sorted(cts)[0],
            "rtstruct": rts, "shape": shape}


def _ingest(root: Path, out: Path) -> tuple[dict | None, tuple[int, ...] | None]:
    """Index and convert every patient under `root`; (rois.json dict, CT shape) of the
    first one that converts, (None, None) when each ends in a clean error."""
    import SimpleITK as sitk

    rows = index_dicom(root, workers=1, progress=False)
    for pid in sorted({r["patient"] for r in rows if r["patient"]}):
        try:
            summary = convert_patient(select_inputs(rows, pid, SETTINGS), out / "conv", SETTINGS)
        except MMFusionError as err:
            assert str(err).strip() and "\n" not in str(err).strip()
            continue
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "conv" / "ct.nii.gz")))
        assert np.isfinite(ct).all()
        return summary, ct.shape
    return None, None


def _mutated_copy(patient: dict, which: str, mutate) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="fuzz_"))
    dest = tmp / "dicom" / patient["folder"].name
    shutil.copytree(patient["folder"], dest)
    target = dest / patient[which].relative_to(patient["folder"])
    target.write_bytes(mutate(target.read_bytes()))
    return tmp


def _check(patient: dict, root: Path) -> None:
    try:
        summary, shape = _ingest(root / "dicom", root)
        if summary is not None:  # a volume came out: it must be the whole series
            assert shape == patient["shape"], (shape, patient["shape"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


byte_edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=8)


def _apply(data: bytes, edits: list[tuple[float, int]], cut: float | None) -> bytes:
    buf = bytearray(data)
    for where, value in edits:
        buf[int(where * len(buf))] = value
    return bytes(buf[: max(1, int(cut * len(buf)))]) if cut is not None else bytes(buf)


@FUZZ
@given(edits=byte_edits, cut=st.none() | st.floats(0.05, 1.0),
       which=st.sampled_from(["ct", "first_ct", "rtstruct"]))
def test_byte_mutations_end_in_a_clean_error_or_a_full_volume(
        patient: dict, edits: list, cut: float | None, which: str) -> None:
    _check(patient, _mutated_copy(patient, which, lambda b: _apply(b, edits, cut)))


weird_numbers = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -1.0,
                                 1e12, -1e-12, 3.5])


def _with_value(keyword: str, value) -> callable:
    def mutate(data: bytes) -> bytes:
        import io

        ds = pydicom.dcmread(io.BytesIO(data))
        if keyword == "ContourData":
            item = ds.ROIContourSequence[0].ContourSequence[0]
            points = list(item.ContourData)
            points[len(points) // 2] = value
            item.ContourData = [str(p) for p in points]
        elif keyword in ("ImagePositionPatient", "PixelSpacing", "ImageOrientationPatient"):
            old = list(getattr(ds, keyword))
            old[0] = value
            setattr(ds, keyword, [str(v) for v in old])
        else:
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()

    return mutate


@FUZZ
@given(keyword=st.sampled_from(["ImagePositionPatient", "PixelSpacing",
                                "ImageOrientationPatient", "SliceThickness",
                                "RescaleSlope", "RescaleIntercept"]),
       value=weird_numbers, which=st.sampled_from(["ct", "first_ct"]))
def test_ct_header_values_end_in_a_clean_error_or_a_full_volume(
        patient: dict, keyword: str, value: float, which: str) -> None:
    text = value if keyword in ("SliceThickness",) else str(value)
    try:
        mutate = _with_value(keyword, text)
        mutate(patient[which].read_bytes())
    except (ValueError, OverflowError, TypeError):
        return  # pydicom itself refuses to encode the value: nothing to ingest
    _check(patient, _mutated_copy(patient, which, mutate))


@FUZZ
@given(value=weird_numbers | st.sampled_from(["abc", "", "1e400", "--3"]))
def test_contour_values_end_in_a_clean_error_or_a_full_volume(patient: dict, value) -> None:
    mutate = _with_value("ContourData", value)
    try:
        mutate(patient["rtstruct"].read_bytes())
    except (ValueError, OverflowError, TypeError):
        return
    _check(patient, _mutated_copy(patient, "rtstruct", mutate))
