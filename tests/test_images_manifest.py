"""The manifest route: NIfTI / NRRD / MetaImage / Slicer segmentations into the same outputs.

Every accepted form of the same patient gives the same gtv_t / gtv_n as the source masks;
every foreseeable bad input ends in a one-line refusal naming the patient and the file, a
recorded exclusion, or a warning in rois.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmfusion.cli import main as cli
from mmfusion.dicom.convert import ConvertSettings
from mmfusion.errors import ConfigError, ImageError
from mmfusion.images.convert import convert_manifest_patient
from mmfusion.images.manifest import (
    entry_from_row,
    index_manifest,
    read_manifest,
    read_manifest_index,
    write_manifest_index,
)
from tests.image_fixtures import (
    SHAPE,
    SPACING,
    image,
    volumes,
    write,
    write_manifest,
    write_slicer_seg,
)

SETTINGS = ConvertSettings.from_config({"tumour": "gtv[-_ ]?t", "node": "gtv[-_ ]?n.*"}, {})


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _convert(tmp: Path, rows: list[dict], patient: str = "P1") -> tuple[dict, Path]:
    manifest = write_manifest(tmp / "manifest.csv", rows)
    index = tmp / "index" / "manifest_index.tsv"
    write_manifest_index(index_manifest(manifest), index)
    row = next(r for r in read_manifest_index(index) if r["patient"] == patient)
    assert not row["problems"], row["problems"]
    out = tmp / "out" / patient
    summary = convert_manifest_patient(entry_from_row(row), out, SETTINGS,
                                       base=row["manifest_dir"])
    return summary, out


@pytest.fixture(scope="module")
def vols() -> dict[str, np.ndarray]:
    return volumes()


def _expect_outputs(out: Path, vols: dict[str, np.ndarray]) -> None:
    assert np.array_equal(_read(out / "ct.nii.gz"), vols["ct"])
    assert np.array_equal(_read(out / "gtv_t.nii.gz"), vols["tumour"].astype(np.uint8))
    nodes = _read(out / "gtv_n.nii.gz")
    # three nodes, labelled 1..3 largest first (the fixture's labels are already by size)
    assert np.array_equal(nodes, vols["nodes"])
    assert [int((nodes == k).sum()) for k in (1, 2, 3)] == \
        sorted((int((vols["nodes"] == k).sum()) for k in (1, 2, 3)), reverse=True)


def test_nifti_label_maps_give_the_source_masks(tmp_path: Path, vols: dict) -> None:
    write(vols["ct"], tmp_path / "img" / "ct.nii.gz")
    write(vols["tumour"].astype(np.uint8), tmp_path / "img" / "tumour.nii.gz")
    write(vols["nodes"] * 5, tmp_path / "img" / "nodes.nii.gz")  # values 5, 10, 15
    summary, out = _convert(tmp_path, [{"patient_id": "P1", "image": "img/ct.nii.gz",
                                        "tumour": "img/tumour.nii.gz",
                                        "nodes": "img/nodes.nii.gz"}])
    _expect_outputs(out, vols)
    assert summary["source"] == "manifest" and len(summary["nodes"]) == 3
    assert json.loads((out / "rois.json").read_text())["tumour"]["voxels"] == vols["tumour"].sum()


def test_nrrd_and_metaimage_with_a_0_255_tumour_and_one_file_per_node(tmp_path: Path,
                                                                       vols: dict) -> None:
    write(vols["ct"], tmp_path / "ct.nrrd")
    write(vols["tumour"].astype(np.uint8) * 255, tmp_path / "tumour.mha")
    for k in (1, 2, 3):
        write((vols["nodes"] == k).astype(np.uint8), tmp_path / f"node {k}.nrrd")
    summary, out = _convert(tmp_path, [{"patient_id": "P1", "image": "ct.nrrd",
                                        "tumour": "tumour.mha",
                                        "nodes": "node 3.nrrd;node 1.nrrd; node 2.nrrd"}])
    _expect_outputs(out, vols)
    assert any("0/255" in w for w in summary["warnings"])


def test_one_label_map_with_tumour_and_nodes(tmp_path: Path, vols: dict) -> None:
    labels = np.where(vols["nodes"] > 0, vols["nodes"] + 1, 0).astype(np.uint8)
    labels[vols["tumour"]] = 1
    write(vols["ct"], tmp_path / "ct.nii.gz")
    write(labels, tmp_path / "seg.nii.gz")
    row = {"patient_id": "P1", "image": "ct.nii.gz", "tumour": "seg.nii.gz",
           "nodes": "seg.nii.gz", "tumour_label": 1}
    _, out = _convert(tmp_path, [row])
    _expect_outputs(out, vols)
    # without tumour_label the several labels are refused, naming patient and file
    with pytest.raises(ImageError, match=r"patient P1, file seg\.nii\.gz.*holds 4 labels") as err:
        _convert(tmp_path, [{**row, "tumour_label": ""}])
    assert "tumour_label" in str(err.value) and str(tmp_path) not in str(err.value)


def test_slicer_segmentation_cropped_with_named_and_overlapping_segments(tmp_path: Path,
                                                                         vols: dict) -> None:
    write(vols["ct"], tmp_path / "ct.nii.gz")
    regions = {"GTV-T": vols["tumour"],
               **{f"GTV-N{k}": vols["nodes"] == k for k in (1, 2, 3)},
               "Oesophagus": np.zeros(SHAPE, bool)}
    regions["Oesophagus"][10:14, 15:22, 15:22] = True  # overlaps the tumour: another layer
    write_slicer_seg(tmp_path / "contours.seg.nrrd", regions, crop=True, layers=True)
    summary, out = _convert(tmp_path, [{"patient_id": "P1", "image": "ct.nii.gz",
                                        "tumour": "contours.seg.nrrd",
                                        "nodes": "contours.seg.nrrd"}])
    _expect_outputs(out, vols)
    assert summary["tumour"]["rois"] == ["GTV-T"]
    assert sorted(summary["node_rois"]) == ["GTV-N1", "GTV-N2", "GTV-N3"]
    assert {p["method"] for p in summary["placements"].values()} == {"same_lattice"}
    # a plain label-valued (single layer) segmentation reads the same
    flat = tmp_path / "flat"
    write(vols["ct"], flat / "ct.nii.gz")
    write_slicer_seg(flat / "flat.seg.nrrd", {k: v for k, v in regions.items()
                                              if k != "Oesophagus"}, layers=False)
    _, out2 = _convert(flat, [{"patient_id": "P1", "image": "ct.nii.gz",
                               "tumour": "flat.seg.nrrd", "nodes": "flat.seg.nrrd"}])
    _expect_outputs(out2, vols)


def test_segment_names_must_match_the_tumour_regex(tmp_path: Path, vols: dict) -> None:
    write(vols["ct"], tmp_path / "ct.nii.gz")
    write_slicer_seg(tmp_path / "c.seg.nrrd", {"Tumor primary": vols["tumour"]})
    with pytest.raises(ImageError, match=r"no segment name matches.*Tumor primary"):
        _convert(tmp_path, [{"patient_id": "P1", "image": "ct.nii.gz", "tumour": "c.seg.nrrd"}])


def test_a_mask_on_another_grid_is_resampled_with_a_warning(tmp_path: Path, vols: dict) -> None:
    write(vols["ct"], tmp_path / "ct.nii.gz")
    # the tumour at half the in-plane resolution (every second voxel), same extent
    coarse = vols["tumour"][:, ::2, ::2].astype(np.uint8)
    write(coarse, tmp_path / "t.nii.gz", spacing=(SPACING[0] * 2, SPACING[1] * 2, SPACING[2]))
    summary, out = _convert(tmp_path, [{"patient_id": "P1", "image": "ct.nii.gz",
                                        "tumour": "t.nii.gz"}])
    assert any("nearest neighbour" in w for w in summary["warnings"])
    tumour = _read(out / "gtv_t.nii.gz").astype(bool)
    overlap = (tumour & vols["tumour"]).sum() / (tumour | vols["tumour"]).sum()
    assert overlap > 0.6  # the same ball, at a coarser grid
    assert any("GTV-N is empty" in w for w in summary["warnings"])


def test_a_mask_that_misses_the_image_is_refused(tmp_path: Path, vols: dict) -> None:
    write(vols["ct"], tmp_path / "ct.nii.gz")
    write(vols["tumour"].astype(np.uint8), tmp_path / "t.nii.gz", origin=(500.0, 500.0, 0.0))
    with pytest.raises(ImageError, match=r"patient P1.*t\.nii\.gz.*does not overlap"):
        _convert(tmp_path, [{"patient_id": "P1", "image": "ct.nii.gz", "tumour": "t.nii.gz"}])


@pytest.mark.parametrize("values, message", [
    ("empty", "empty"),
    ("probability", "non-integer"),
    ("negative", "negative"),
    ("absent_label", "tumour_label 2 is not in"),
])
def test_bad_tumour_masks_are_refused_in_one_line(tmp_path: Path, vols: dict, values: str,
                                                   message: str) -> None:
    write(vols["ct"], tmp_path / "ct.nii.gz")
    tumour = vols["tumour"].astype(np.float32)
    row = {"patient_id": "P1", "image": "ct.nii.gz", "tumour": "t.nii.gz"}
    if values == "empty":
        tumour[:] = 0
    elif values == "probability":
        tumour *= 0.8
    elif values == "negative":
        tumour[0, 0, 0] = -1
    else:
        row["tumour_label"] = 2
    write(tumour, tmp_path / "t.nii.gz")
    with pytest.raises(ImageError, match=message) as err:
        _convert(tmp_path, [row])
    assert "patient P1" in str(err.value) and "\n" not in str(err.value)


def test_intensities_that_are_not_hu_are_warned(tmp_path: Path, vols: dict) -> None:
    ct = vols["ct"].astype(np.float32)
    write((ct + 1000) / 1100, tmp_path / "normalised.nii.gz")
    write(ct + 1024, tmp_path / "unrescaled.nii.gz")
    write(vols["tumour"].astype(np.uint8), tmp_path / "t.nii.gz")
    for name, text in (("normalised", "normalised"), ("unrescaled", "no voxel below -200")):
        summary, _ = _convert(tmp_path, [{"patient_id": "P1", "image": f"{name}.nii.gz",
                                          "tumour": "t.nii.gz"}])
        assert any(text in w for w in summary["warnings"]), summary["warnings"]
    write(vols["ct"], tmp_path / "ct.nii.gz")
    summary, _ = _convert(tmp_path, [{"patient_id": "P1", "image": "ct.nii.gz",
                                      "tumour": "t.nii.gz"}])
    assert not any("HU" in w for w in summary["warnings"])


def test_index_records_file_problems_and_convert_excludes_the_patient(tmp_path: Path,
                                                                       vols: dict) -> None:
    import SimpleITK as sitk

    frame = image(vols["ct"])
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(tmp_path / "4d.nii.gz"))  # 2 frames
    write(vols["ct"], tmp_path / "ct.nii.gz")
    write(vols["tumour"].astype(np.uint8), tmp_path / "t.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    manifest = write_manifest(tmp_path / "m.csv", [
        {"patient_id": "four-d", "image": "4d.nii.gz", "tumour": "t.nii.gz"},
        {"patient_id": "missing", "image": "ct.nii.gz", "tumour": "nope.nii.gz"},
        {"patient_id": "broken", "image": "ct.nii.gz", "tumour": "broken.nii.gz"},
        {"patient_id": "fine", "image": "ct.nii.gz", "tumour": "t.nii.gz"},
    ])
    index = tmp_path / "res" / "dicom_index.tsv"
    assert cli(["index", "--manifest", str(manifest), "--out", str(index)]) == 0
    rows = {r["patient"]: r for r in read_manifest_index(index.parent / "manifest_index.tsv")}
    assert "4-D image" in rows["four-d"]["problems"][0]
    assert "not found" in rows["missing"]["problems"][0]
    assert "unreadable" in rows["broken"]["problems"][0]
    assert rows["fine"]["problems"] == []
    for pid, text in (("four-d", "4-D"), ("missing", "not found"), ("fine", "")):
        status = tmp_path / "res" / pid / "status.json"
        assert cli(["convert", "--index", str(index), "--manifest-index",
                    str(index.parent / "manifest_index.tsv"), "--patient", pid,
                    "--out", str(status.parent), "--status-out", str(status)]) == 0
        record = json.loads(status.read_text())
        assert record["status"] == ("ok" if not text else "excluded"), record
        assert text in record["reason"] and str(tmp_path) not in record["reason"]


@pytest.mark.parametrize("text, message", [
    ("patient_id,image\nP1,ct.nii.gz\n", "no column tumour"),
    ("patient_id,image,tumour\nP1,ct.nii.gz,t.nii.gz\nP1 ,ct.nii.gz,t.nii.gz\n",
     "two rows for one patient"),
    ("patient_id,image,tumour\n,ct.nii.gz,t.nii.gz\n", "empty patient_id"),
    ("patient_id,image,tumour,tumour_label\nP1,ct.nii.gz,t.nii.gz,1.5\n", "positive integer"),
    ("patient_id,image,tumour\n", "lists no patient"),
])
def test_manifest_structure_errors_stop_the_run(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_manifest(path)


def test_tsv_manifest_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.tsv"
    path.write_text("patient_id\timage\ttumour\tnodes\n"
                    "A/1\t../ct.nii.gz\tt.nii.gz\ta.nrrd; b.nrrd\n")
    (entry,) = read_manifest(path)
    assert entry.patient != "A/1" and "/" not in entry.patient  # sanitised for a folder name
    assert entry.image == str(tmp_path / "sub" / ".." / "ct.nii.gz")
    assert entry.nodes == (str(tmp_path / "sub" / "a.nrrd"), str(tmp_path / "sub" / "b.nrrd"))



@pytest.mark.parametrize("case", ["nan_ct", "folder_as_mask", "text_as_image", "nan_mask"])
def test_hostile_files_end_in_a_clean_exclusion(tmp_path: Path, vols: dict, case: str) -> None:
    """Hostile files in a manifest: a recorded exclusion naming the patient, no traceback."""
    ct, tumour = vols["ct"].astype(np.float32), vols["tumour"].astype(np.float32)
    row = {"patient_id": "P1", "image": "ct.nii.gz", "tumour": "t.nii.gz"}
    if case == "nan_ct":
        ct[3, 4, 5] = np.nan
    elif case == "nan_mask":
        tumour[3, 4, 5] = np.nan
    write(ct, tmp_path / "ct.nii.gz")
    write(tumour, tmp_path / "t.nii.gz")
    if case == "folder_as_mask":
        (tmp_path / "masks").mkdir()
        row["tumour"] = "masks"
    elif case == "text_as_image":
        (tmp_path / "ct.txt").write_text("not a volume")
        row["image"] = "ct.txt"
    manifest = write_manifest(tmp_path / "m.csv", [row])
    index = tmp_path / "res" / "dicom_index.tsv"
    assert cli(["index", "--manifest", str(manifest), "--out", str(index)]) == 0
    status = tmp_path / "res" / "P1" / "status.json"
    assert cli(["convert", "--manifest-index", str(index.parent / "manifest_index.tsv"),
                "--patient", "P1", "--out", str(status.parent), "--status-out",
                str(status)]) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "excluded" and "patient P1" in record["reason"], record
    assert "Traceback" not in record["reason"] and "\n" not in record["reason"]
    assert not (status.parent / "gtv_t.nii.gz").exists()  # nothing that looks complete
