"""QC picture of the crop stage: does each patch sit on its tumour or node?

One row per patch (tumour, then each present node), two columns (axial, coronal), each a
slice through the patch centre of a context field twice the patch's size, with the CT in
the HU window, the GTV-T contour in red, node contours in other colours and the patch
outline dashed. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from mmfusion.features.patches import patch_grid, resample_to
from mmfusion.io import atomic_path

if TYPE_CHECKING:
    from mmfusion.features.patches import CropSettings, Patches

NODE_COLOURS = ("#00d0ff", "#ffd000", "#50ff50", "#ff60ff", "#ffffff")
CONTEXT = 2.0  # context field / patch size


def _slices(ct_f, gtv_t, gtv_n, centre, size_dhw, spacing):
    ctx = tuple(max(int(round(n * CONTEXT)), 1) for n in size_dhw)
    grid = patch_grid(ct_f, centre, ctx, spacing)
    hu = resample_to(ct_f, grid, label=False, default=-1024.0)
    t = resample_to(gtv_t, grid, label=True)
    n = resample_to(gtv_n, grid, label=True)
    d, h, w = ctx
    zc, yc = (d - 1) // 2, (h - 1) // 2
    xs = (np.arange(w) - (w - 1) / 2.0) * spacing[0]
    ys = (np.arange(h) - (h - 1) / 2.0) * spacing[1]
    zs = (np.arange(d) - (d - 1) / 2.0) * spacing[2]
    axial = (hu[zc], t[zc], n[zc], xs, ys)
    coronal = (hu[:, yc, :], t[:, yc, :], n[:, yc, :], xs, zs)
    return axial, coronal


def _draw(ax, view, window, size_mm, title, n_labels):
    img, t, n, us, vs = view
    du, dv = us[1] - us[0] if len(us) > 1 else 1.0, vs[1] - vs[0] if len(vs) > 1 else 1.0
    extent = (us[0] - du / 2, us[-1] + du / 2, vs[0] - dv / 2, vs[-1] + dv / 2)
    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
              extent=extent, interpolation="nearest")
    if t.any() and t.min() != t.max():
        ax.contour(us, vs, (t > 0).astype(float), levels=[0.5], colors="red", linewidths=1.2)
    for label in range(1, n_labels + 1):
        m = n == label
        if m.any() and not m.all():
            ax.contour(us, vs, m.astype(float), levels=[0.5],
                       colors=NODE_COLOURS[min(label - 1, len(NODE_COLOURS) - 1)],
                       linewidths=1.0)
    hu_, hv_ = size_mm[0] / 2, size_mm[1] / 2
    ax.plot([-hu_, hu_, hu_, -hu_, -hu_], [-hv_, -hv_, hv_, hv_, -hv_], "--", color="orange",
            linewidth=1.0)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)


def plot_patient_qc(
    ct: sitk.Image,
    gtv_t: sitk.Image,
    gtv_n: sitk.Image,
    patches: Patches,
    settings: CropSettings,
    out_png: str | Path,
) -> None:
    """Write the QC PNG of one patient's patches (see module docstring)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ct_f = sitk.Cast(ct, sitk.sitkFloat32)
    gtv_t = sitk.Cast(gtv_t > 0, sitk.sitkUInt8)
    gtv_n = sitk.Cast(gtv_n, sitk.sitkUInt16)
    rows = [("tumour", patches.meta["tumour"]["centre_mm"], settings.tumour_size)]
    for i, node_meta in enumerate(patches.meta["nodes"]):
        if node_meta is not None:
            rows.append((f"node{i + 1}", node_meta["centre_mm"], settings.node_sizes[i]))
    n_labels = int(patches.meta.get("n_node_labels", 0))
    sp = settings.spacing
    fig, axes = plt.subplots(len(rows), 2, figsize=(6.4, 3.0 * len(rows)), squeeze=False)
    for r, (name, centre, size) in enumerate(rows):
        axial, coronal = _slices(ct_f, gtv_t, gtv_n, centre, size, sp)
        d, h, w = size
        c = ", ".join(f"{v:.0f}" for v in centre)
        _draw(axes[r, 0], axial, settings.hu_window, (w * sp[0], h * sp[1]),
              f"{name} axial  centre ({c}) mm", n_labels)
        axes[r, 0].invert_yaxis()  # anterior (−y in LPS) at the top, radiological view
        _draw(axes[r, 1], coronal, settings.hu_window, (w * sp[0], d * sp[2]),
              f"{name} coronal", n_labels)
    patient = patches.meta.get("patient_id") or ""
    absent = [f"node{i + 1}" for i, p in enumerate(patches.node_present) if not p]
    fig.suptitle(f"{patient}  (red GTV-T, colours GTV-N, dashed = patch)"
                 + (f"\nabsent: {', '.join(absent)}" if absent else ""), fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
