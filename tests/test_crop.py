"""Crop stage: patch geometry, presence flags, normalisation, QC picture, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from mmfusion.errors import ConfigError, MMFusionError
from mmfusion.features.crop import crop_patient, run_crop
from mmfusion.features.patches import CropSettings, load_patches


def make_volume(path=None, n_nodes=2, spacing=(3.5, 3.5, 5.0), size=(40, 36, 20)):
    """Tiny CT (soft tissue 40 HU, air outside a body ellipse) with spherical ROIs.

    Returns (ct, gtv_t, gtv_n, centres_mm) and writes NIfTIs into `path` when given.
    """
    nx, ny, nz = size
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ct = np.full((nz, ny, nx), -1000, np.int16)
    body = ((x - nx / 2) / (nx * 0.45)) ** 2 + ((y - ny / 2) / (ny * 0.45)) ** 2 <= 1
    ct[body] = 40
    origin = (-100.0, -80.0, -50.0)

    def sphere(cx, cy, cz, r_mm):
        return (((x - cx) * spacing[0]) ** 2 + ((y - cy) * spacing[1]) ** 2
                + ((z - cz) * spacing[2]) ** 2) <= r_mm**2

    t = sphere(20, 18, 10, 12.0)
    ct[t] = 120
    nodes = np.zeros_like(ct, dtype=np.uint16)
    specs = [(10, 12, 8, 8.0), (30, 26, 12, 6.0), (30, 8, 6, 5.0)][:n_nodes]
    for label, (cx, cy, cz, r) in enumerate(specs, start=1):
        nodes[sphere(cx, cy, cz, r)] = label
        ct[sphere(cx, cy, cz, r)] = 80

    def img(a):
        im = sitk.GetImageFromArray(a)
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
        return im

    ct_i, t_i, n_i = img(ct), img(t.astype(np.uint8)), img(nodes)
    centres = [tuple(o + c * s for o, c, s in zip(origin, (cx, cy, cz), spacing, strict=True))
               for cx, cy, cz in [(20, 18, 10)] + [s[:3] for s in specs]]
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(ct_i, str(path / "ct.nii.gz"))
        sitk.WriteImage(t_i, str(path / "gtv_t.nii.gz"))
        sitk.WriteImage(n_i, str(path / "gtv_n.nii.gz"))
        (path / "convert_status.json").write_text(json.dumps(
            {"patient_id": path.name, "status": "ok", "reason": "", "warnings": []}))
    return ct_i, t_i, n_i, centres


SMALL = {"spacing": [2, 2, 2], "tumour_size": [12, 24, 24],
         "node_sizes": [[8, 16, 16], [8, 12, 12], [6, 10, 10]],
         "hu_window": [-160, 240], "qc_png": False}


@pytest.mark.parametrize("n_nodes", [0, 1, 2, 3])
def test_shapes_and_presence(n_nodes):
    ct, t, n, _ = make_volume(n_nodes=n_nodes)
    s = CropSettings.from_config(SMALL)
    p = crop_patient(ct, t, n, s, patient="P1")
    assert p.tumour.shape == (12, 24, 24) and p.tumour.dtype == np.float32
    assert [a.shape for a in p.nodes] == [(8, 16, 16), (8, 12, 12), (6, 10, 10)]
    assert p.node_present.tolist() == [1] * n_nodes + [0] * (3 - n_nodes)
    for present, a in zip(p.node_present, p.nodes, strict=True):
        if not present:
            assert not a.any()
    assert 0.0 <= p.tumour.min() and p.tumour.max() <= 1.0


def test_minmax_normalisation_is_the_hu_window_scaled_to_unit_range():
    """minmax: clip((HU - low) / (high - low), 0, 1) with the window [-160, 240]."""
    ct, t, n, _ = make_volume()
    s = CropSettings.from_config({**SMALL, "normalisation": "minmax"})
    p = crop_patient(ct, t, n, s)
    raw = crop_patient(ct, t, n, CropSettings.from_config({**SMALL, "normalisation": "none"}))
    np.testing.assert_allclose(p.tumour, np.clip((raw.tumour + 160) / 400, 0, 1), atol=1e-6)
    assert p.node_present.tolist() == [1, 1, 0]
    for a, b in zip(p.nodes[:2], raw.nodes[:2], strict=True):
        np.testing.assert_allclose(a, np.clip((b + 160) / 400, 0, 1), atol=1e-6)
    assert not p.nodes[2].any()  # an absent node stays all zero
    assert p.tumour[6, 12, 12] == pytest.approx((120 + 160) / 400)  # tumour centre, 120 HU
    assert p.tumour.min() == pytest.approx((40 + 160) / 400)  # soft tissue around it


def test_patch_centred_on_roi():
    """The voxel at the patch centre is tumour (120 HU) and the centre in meta is right."""
    ct, t, n, centres = make_volume()
    s = CropSettings.from_config({**SMALL, "tumour_size": [13, 23, 23],
                                  "node_sizes": [[7, 15, 15], [7, 11, 11], [5, 9, 9]],
                                  "normalisation": "none"})
    p = crop_patient(ct, t, n, s)
    assert p.tumour[6, 11, 11] == pytest.approx(120.0)
    assert p.nodes[0][3, 7, 7] == pytest.approx(80.0)
    np.testing.assert_allclose(p.meta["tumour"]["centre_mm"], centres[0], atol=1e-6)
    np.testing.assert_allclose(p.meta["nodes"][0]["centre_mm"], centres[1], atol=1e-6)
    assert p.meta["tumour"]["fraction_inside"] > 0.95


def test_padding_outside_scan_is_window_low():
    ct, t, n, _ = make_volume()
    s = CropSettings.from_config({**SMALL, "tumour_size": [60, 24, 24], "normalisation": "none"})
    p = crop_patient(ct, t, n, s)
    assert p.tumour[0].max() == pytest.approx(-160.0)  # z beyond the 100 mm scan


def test_zscore_normalisation():
    ct, t, n, _ = make_volume()
    p = crop_patient(ct, t, n, CropSettings.from_config({**SMALL, "normalisation": "zscore"}))
    assert abs(float(p.tumour.mean())) < 1e-4 and float(p.tumour.std()) == pytest.approx(1, 1e-3)


def test_bad_settings():
    with pytest.raises(ConfigError, match="unknown crop"):
        CropSettings.from_config({"spacingg": [1, 1, 1]})
    with pytest.raises(ConfigError, match=r"hu_window must be \[low, high\], got \(100.0, -1"):
        CropSettings.from_config({"hu_window": [100, -100]})
    with pytest.raises(ConfigError, match="crop.node_sizes three such lists"):
        CropSettings.from_config({"node_sizes": [[8, 8, 8]]})


def test_empty_tumour_and_grid_mismatch():
    ct, t, n, _ = make_volume()
    empty = sitk.Image(t) * 0
    with pytest.raises(MMFusionError, match="empty"):
        crop_patient(ct, empty, n, CropSettings.from_config(SMALL), patient="P1")
    shifted = sitk.Image(t)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(MMFusionError, match="not on the CT grid"):
        crop_patient(ct, shifted, n, CropSettings.from_config(SMALL), patient="P1")


def test_run_crop_writes_npz_and_qc(tmp_path):
    d = tmp_path / "P7"
    make_volume(d, n_nodes=2)
    run_crop(d, CropSettings.from_config({**SMALL, "qc_png": True}))
    p = load_patches(d / "patches.npz")
    assert p.node_present.dtype == np.uint8 and p.node_present.tolist() == [1, 1, 0]
    assert p.meta["patient_id"] == "P7" and p.meta["hu_window"] == [-160, 240]
    assert (d / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(d.glob(".*tmp*"))


def test_cli(tmp_path):
    from mmfusion.cli import main

    d = tmp_path / "P8"
    make_volume(d, n_nodes=1)
    assert main(["crop", str(d), "--settings", json.dumps(SMALL)]) == 0
    assert (d / "patches.npz").is_file()
    # excluded patients are refused with a clear message
    (d / "convert_status.json").write_text(json.dumps(
        {"patient_id": "P8", "status": "excluded", "reason": "no GTV", "warnings": []}))
    assert main(["crop", str(d)]) == 1


def test_warns_when_roi_exceeds_patch():
    ct, t, n, _ = make_volume()
    p = crop_patient(ct, t, n, CropSettings.from_config({**SMALL, "tumour_size": [4, 6, 6]}))
    assert p.meta["tumour"]["fraction_inside"] < 0.5
    assert any("tumour extends beyond" in w for w in p.meta["warnings"])
    ok = crop_patient(ct, t, n, CropSettings.from_config(SMALL))
    assert ok.meta["tumour"]["fraction_inside"] == 1.0 and not ok.meta["warnings"]


def nearest_roi(label_img, label, patch_meta_centre, size, spacing, reference):
    """The ROI `label_img == label` on a patch grid, resampled by nearest neighbour."""
    from mmfusion.features.patches import patch_grid

    grid = patch_grid(reference, patch_meta_centre, size, spacing)
    roi = sitk.Resample(sitk.Cast(label_img == label, sitk.sitkUInt8), grid, sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(roi).astype(bool)


def zscore_of_low(clipped_hu):
    """The window's low bound (-160 HU) z-scored with a clipped HU patch's statistics."""
    low = np.full(1, -160, np.float32)
    return ((low - float(clipped_hu.mean())) / float(clipped_hu.std()))[0]


@pytest.mark.parametrize("normalisation", ["minmax", "zscore", "none"])
def test_apply_mask_sets_outside_to_padding_and_keeps_inside(normalisation):
    """Masked CT: outside the patch's own ROI exactly the padding value (what a voxel past
    the scan takes in the same patch), inside exactly the unmasked patch."""
    ct, t, n, _ = make_volume(n_nodes=2)
    # 60 slices at 2 mm reach past the 100 mm scan: the unmasked patch holds real padding
    base = {**SMALL, "tumour_size": [60, 24, 24], "normalisation": normalisation}
    plain = crop_patient(ct, t, n, CropSettings.from_config(base))
    masked = crop_patient(ct, t, n, CropSettings.from_config({**base, "apply_mask": True}))
    assert masked.meta["apply_mask"] is True and "apply_mask" not in plain.meta
    pad = plain.tumour[0, 0, 0]  # z beyond the scan: padding
    assert pad == {"minmax": 0.0, "none": -160.0}.get(normalisation, pad)
    s = CropSettings.from_config(base)
    rois = [nearest_roi(t, 1, masked.meta["tumour"]["centre_mm"], s.tumour_size, s.spacing, ct)]
    for k in (1, 2):
        rois.append(nearest_roi(n, k, masked.meta["nodes"][k - 1]["centre_mm"],
                                s.node_sizes[k - 1], s.spacing, ct))
    hu = crop_patient(ct, t, n, CropSettings.from_config({**base, "normalisation": "none"}))
    if normalisation == "zscore":
        assert zscore_of_low(hu.tumour) == pad
    for roi, a, b, h in zip(rois, [masked.tumour, *masked.nodes[:2]],
                            [plain.tumour, *plain.nodes[:2]], [hu.tumour, *hu.nodes[:2]],
                            strict=True):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert 0 < roi.sum() < roi.size
        np.testing.assert_array_equal(a[roi], b[roi])  # inside: unchanged, bit for bit
        # z-score: per-patch statistics, so each patch has its own padding value
        p = zscore_of_low(h) if normalisation == "zscore" else pad
        assert (a[~roi] == p).all()
        assert np.any(b[~roi] != p)  # the unmasked patch does show surrounding tissue
    assert not masked.nodes[2].any() and masked.node_present.tolist() == [1, 1, 0]


def test_apply_mask_uses_the_patch_own_roi():
    """A node inside the tumour patch is masked out of it (node k's patch: node k only)."""
    ct, t, n, _ = make_volume(n_nodes=1)
    # 48 x 48 voxels at 2 mm (96 mm) around the tumour reach node1, 35 mm off in x
    base = {**SMALL, "tumour_size": [12, 48, 48], "normalisation": "none"}
    plain = crop_patient(ct, t, n, CropSettings.from_config(base))
    masked = crop_patient(ct, t, n, CropSettings.from_config({**base, "apply_mask": True}))
    assert np.isclose(plain.tumour, 80.0).any()  # node1 (80 HU) lies in the tumour patch
    assert not np.isclose(masked.tumour, 80.0).any()
    assert masked.tumour.max() == pytest.approx(120.0)  # the tumour itself stays
    assert masked.nodes[0].max() == pytest.approx(80.0)


def test_apply_mask_default_false_leaves_patches_unchanged(tmp_path):
    """The default (false) gives exactly the patches and file of before: no mask, no new
    meta key, the same bytes as apply_mask: false."""
    assert CropSettings.from_config(SMALL).apply_mask is False
    ct, t, n, _ = make_volume(n_nodes=3)
    default = crop_patient(ct, t, n, CropSettings.from_config(SMALL))
    off = crop_patient(ct, t, n, CropSettings.from_config({**SMALL, "apply_mask": False}))
    for a, b in zip([default.tumour, *default.nodes], [off.tumour, *off.nodes], strict=True):
        np.testing.assert_array_equal(a, b)
    assert "apply_mask" not in default.meta and default.meta == off.meta
    default.save(tmp_path / "a.npz")
    off.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # and what it always was: the CT resampled onto the patch grid (linear, padded with
    # the window's low end), clipped and min-max scaled, nothing masked
    s = CropSettings.from_config(SMALL)
    from mmfusion.features.patches import patch_grid

    cases = [(default.tumour, default.meta["tumour"]["centre_mm"], s.tumour_size)]
    cases += [(default.nodes[k], default.meta["nodes"][k]["centre_mm"], s.node_sizes[k])
              for k in range(3)]
    for patch, centre, size in cases:
        grid = patch_grid(ct, centre, size, s.spacing)
        hu = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), grid,
                                                  sitk.Transform(), sitk.sitkLinear, -160.0,
                                                  sitk.sitkFloat32))
        expected = (np.clip(hu, -160.0, 240.0).astype(np.float32) + 160.0) / 400.0
        np.testing.assert_array_equal(patch, expected.astype(np.float32))
    assert default.tumour.min() == pytest.approx((40 + 160) / 400)  # tissue around it kept
    with pytest.raises(ConfigError, match="apply_mask must be true or false"):
        CropSettings.from_config({**SMALL, "apply_mask": "yes"})
