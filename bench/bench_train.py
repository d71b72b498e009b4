"""Benchmark: our training step pipeline vs a naive per-sample pipeline like the reference.

Ours = `SplitData.batches` (one fancy-indexing read per patch kind from the memory-mapped
patch cache), batched augmentation on the device (`mmfusion.train.augment`), and the model
whose HGA runs one cached `dgl.batch`-ed graph per batch.
Naive = what the reference code does per sample: a `Dataset.__getitem__` that reads each of
the four patches from its own NIfTI file and applies four transforms (noise, bias field,
flip, motion; TorchIO's when it is installed, else per-sample NumPy equivalents of the same
cost class: k-space motion via FFT) to each patch, collated by a `DataLoader`, and an HGA
whose graph is rebuilt per patient and run in a Python loop over the batch.
Both train the same `MMFusionModel` shapes (same seed, same optimiser), so the difference is
the input pipeline and the graph handling. Ours and naive alternate step by step so drift
in machine load hits both. `data wait` = time from the end of one step to the next batch
being ready (ours: reading the batch; augmentation runs inside the step, so `aug` reports
its share too).

Frozen-backbone mode: the same step with the backbone feature maps read from a cache
(`tumour_fmap`, ... inputs) instead of running (and back-propagating through) the 3D CNNs.

    python bench/bench_train.py [--shapes demo|paper|both] [--steps N] [--threads T]

demo: the config's patch sizes, ResNet-10 width 8, shared backbone; paper: ResNet-18 width
64 (MedicalNet), tumour 42x128x128, nodes 22x90x90, 16x68x68, 8x48x48, one backbone per
patch kind (reference), batch 12.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfusion.model.hga import complete_graph  # noqa: E402
from mmfusion.model.mmfusion import NODE_KEYS, MMFusionModel, ModelConfig  # noqa: E402
from mmfusion.train.augment import AugmentSettings, augment  # noqa: E402
from mmfusion.train.dataset import PATCH_KINDS, SplitData, build_patch_cache, open_patch_cache  # noqa: E402,E501

SHAPES = {
    "demo": {"tumour": (20, 48, 48), "nodes": [(8, 32, 32), (8, 24, 24), (8, 24, 24)],
             "model": {"depth": 10, "base_width": 8, "shared_backbone": True, "mmrl_dim": 32,
                       "hga_dim": 32, "hga_out": 32, "head_hidden": 64,
                       "diffusion_hidden": 64}},
    "paper": {"tumour": (42, 128, 128), "nodes": [(22, 90, 90), (16, 68, 68), (8, 48, 48)],
              "model": {"depth": 18, "base_width": 64, "shared_backbone": False}},
}
TABLE_WIDTHS = {"clinical": 20, "hematology": 11, "radiomics_tumour": 8, "radiomics_node": 7}
BATCH = 12


def make_cohort(root: Path, shapes: Mapping, n: int, seed: int = 0) -> tuple[SplitData, list]:
    """n random patients: per-patient NIfTI patches (naive) and the memmap cache (ours)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    ids, npz_paths, nifti = [], [], []
    sizes = {"tumour": shapes["tumour"], **dict(zip(NODE_KEYS, shapes["nodes"], strict=True))}
    for i in range(n):
        pid = f"P{i:03d}"
        pdir = root / pid
        pdir.mkdir(parents=True)
        patches = {k: rng.random(s, dtype=np.float32) for k, s in sizes.items()}
        present = (np.arange(3) < rng.integers(1, 4)).astype(np.uint8)
        np.savez(pdir / "patches.npz", **patches, node_present=present)
        files = {}
        for kind, arr in patches.items():
            files[kind] = pdir / f"{kind}.nii.gz"
            nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0), np.eye(4)), files[kind])
        ids.append(pid)
        npz_paths.append(pdir / "patches.npz")
        nifti.append((files, present))
    cache_ids, arrays = open_patch_cache(build_patch_cache(ids, npz_paths, root / "cache"))
    tables = {g: rng.standard_normal((n, w)).astype(np.float32) for g, w in TABLE_WIDTHS.items()}
    labels = (rng.random(n) < 0.4).astype(np.int64)
    labels[:2] = [0, 1]
    split = SplitData(ids, {k: arrays[k] for k in PATCH_KINDS}, arrays["node_present"], tables,
                      labels, np.arange(n))
    return split, nifti


# ---- the naive pipeline ---------------------------------------------------------------------
def _naive_transforms():
    """Four per-patch transforms: TorchIO's if installed, else NumPy equivalents."""
    try:
        import torchio as tio

        t = tio.Compose([tio.RandomNoise(p=0.4), tio.RandomBiasField(p=0.3),
                         tio.RandomFlip(p=0.6), tio.RandomMotion(p=0.2)])
        return (lambda a, rng: t(torch.from_numpy(a[None]))[0].numpy()), "torchio"
    except ImportError:
        pass

    def apply(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.4:  # RandomNoise
            a = a + rng.normal(0, rng.uniform(0, 0.25), a.shape).astype(np.float32)
        if rng.random() < 0.3:  # RandomBiasField (order-3 polynomial, per voxel)
            z, y, x = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in a.shape],
                                  indexing="ij")
            field = np.zeros_like(a)
            for i in range(4):
                for j in range(4 - i):
                    for k in range(4 - i - j):
                        field += rng.uniform(-0.5, 0.5) * z**i * y**j * x**k
            a = a * np.exp(field)
        if rng.random() < 0.6:  # RandomFlip
            a = np.flip(a, axis=int(rng.integers(3))).copy()
        if rng.random() < 0.2:  # RandomMotion: k-space mix of 2 moved copies
            k = np.fft.fftn(a)
            moved = np.fft.fftn(np.roll(a, int(rng.integers(1, 4)), axis=int(rng.integers(3))))
            lines = rng.random(a.shape[0]) < 0.5
            k[lines] = moved[lines]
            a = np.abs(np.fft.ifftn(k)).astype(np.float32)
        return a

    return apply, "numpy stand-ins (torchio not installed)"


class NaiveDataset(torch.utils.data.Dataset):
    """Reference-style sample: one NIfTI read + four transforms per patch."""

    def __init__(self, nifti: list, split: SplitData, transform) -> None:
        self.nifti, self.split, self.transform = nifti, split, transform
        self.rng = np.random.default_rng(1)

    def __len__(self) -> int:
        return len(self.nifti)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        import nibabel as nib

        files, present = self.nifti[i]
        out = {}
        for kind in PATCH_KINDS:
            arr = np.asarray(nib.load(files[kind]).get_fdata(dtype=np.float32)).transpose(2, 1, 0)
            out[kind] = torch.from_numpy(np.ascontiguousarray(self.transform(arr, self.rng)))[None]
        out["node_present"] = torch.from_numpy(present)
        for g, arr in self.split.tables.items():
            out[g] = torch.from_numpy(arr[i])
        out["label"] = torch.tensor(float(self.split.labels[i]))
        return out


def naive_forward(model: MMFusionModel, batch: Mapping[str, torch.Tensor]):
    """The model's forward with the reference's HGA: graph rebuilt per patient, in a loop."""
    fmaps = model.encode_images(batch)
    present = batch["node_present"].bool()
    t_emb, n_emb, align_t, align_n = model.image_embeddings(fmaps, present)
    if model.cfg.node_count:
        n_emb = torch.cat([n_emb, present.to(n_emb.dtype)], dim=-1)
    vertices = model.hga.encode({"tumour_image": t_emb, "node_image": n_emb,
                                 **{g: batch[g] for g in model.tabular_widths}})
    feats = []
    for b in range(vertices.shape[0]):  # per patient, as the reference
        graph = complete_graph(vertices.shape[1])
        feats.append(model.hga.gat(graph, vertices[b]).reshape(1, -1))
    features = torch.cat(feats)
    from mmfusion.model.mmfusion import ModelOutput

    return ModelOutput(model.head(features).squeeze(-1), features, align_t, align_n)


# ---- timing ---------------------------------------------------------------------------------
def _step(model, opt, batch, forward) -> None:
    out = forward(batch)
    terms = model.loss(batch, out, "joint")
    opt.zero_grad(set_to_none=True)
    terms["total"].backward()
    opt.step()


def run(shapes_name: str, steps: int, n_patients: int) -> dict[str, float]:
    shapes = SHAPES[shapes_name]
    torch.manual_seed(0)
    cfg = ModelConfig(variant="mmfusion", **shapes["model"])
    widths = {**TABLE_WIDTHS}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        split, nifti = make_cohort(Path(tmp), shapes, n_patients)
        transform, tname = _naive_transforms()
        model = MMFusionModel(cfg, widths)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        device = torch.device("cpu")
        gen = torch.Generator().manual_seed(0)
        aug = AugmentSettings()
        loader = torch.utils.data.DataLoader(NaiveDataset(nifti, split, transform),
                                             batch_size=BATCH, shuffle=True, num_workers=0,
                                             drop_last=True)
        ours_iter = iter(())
        naive_iter = iter(())
        res = {"ours_wait": [], "ours_aug": [], "ours_step": [], "naive_wait": [],
               "naive_step": [], "frozen_step": [], "full_step": []}
        for i in range(steps + 1):  # step 0 warms both up and is not counted
            # ours
            t0 = time.perf_counter()
            batch = next(ours_iter, None)
            if batch is None:
                ours_iter = split.batches(BATCH, device, gen, drop_singleton=True)
                batch = next(ours_iter)
            t1 = time.perf_counter()
            for kind in PATCH_KINDS:
                batch[kind] = augment(batch[kind], aug, gen)
            t2 = time.perf_counter()
            model.train()
            _step(model, opt, batch, model)
            t3 = time.perf_counter()
            # naive
            nb = next(naive_iter, None)
            if nb is None:
                naive_iter = iter(loader)
                nb = next(naive_iter)
            t4 = time.perf_counter()
            _step(model, opt, nb, lambda b: naive_forward(model, b))
            t5 = time.perf_counter()
            # frozen backbone: cached feature maps in place of the images
            with torch.no_grad():
                fmaps = model.encode_images(batch)
            cached = {**{k: v for k, v in batch.items() if k not in PATCH_KINDS}, **fmaps}
            t6 = time.perf_counter()
            _step(model, opt, cached, model)
            t7 = time.perf_counter()
            if i == 0:
                continue
            res["ours_wait"].append(t1 - t0)
            res["ours_aug"].append(t2 - t1)
            res["ours_step"].append(t3 - t0)
            res["naive_wait"].append(t4 - t3)
            res["naive_step"].append(t5 - t3)
            res["frozen_step"].append(t7 - t6)
            res["full_step"].append(t3 - t2)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "ours_samples_per_s": BATCH / med["ours_step"],
        "naive_samples_per_s": BATCH / med["naive_step"],
        "speedup": med["naive_step"] / med["ours_step"],
        "ours_wait_share": med["ours_wait"] / med["ours_step"],
        "ours_wait_aug_share": (med["ours_wait"] + med["ours_aug"]) / med["ours_step"],
        "naive_wait_share": med["naive_wait"] / med["naive_step"],
        "frozen_samples_per_s": BATCH / med["frozen_step"],
        "frozen_saving": med["full_step"] / med["frozen_step"],
    }
    print(f"\n== {shapes_name} shapes: tumour {shapes['tumour']}, nodes {shapes['nodes']}, "
          f"ResNet-{cfg.depth} width {cfg.base_width}, "
          f"{'shared' if cfg.shared_backbone else 'per-kind'} backbone, batch {BATCH}, "
          f"{steps} timed steps, {torch.get_num_threads()} threads; naive transforms: {tname}")
    print(f"  ours : {out['ours_samples_per_s']:8.2f} samples/s  step {med['ours_step']:.3f} s"
          f"  data wait {100 * out['ours_wait_share']:.1f}% "
          f"(+augmentation {100 * out['ours_wait_aug_share']:.1f}%)")
    print(f"  naive: {out['naive_samples_per_s']:8.2f} samples/s  step {med['naive_step']:.3f} s"
          f"  data wait {100 * out['naive_wait_share']:.1f}%")
    print(f"  ours / naive samples/s: {out['speedup']:.2f}x")
    print(f"  frozen backbone, cached feature maps: {out['frozen_samples_per_s']:.2f} samples/s"
          f" (model step {med['frozen_step']:.4f} s vs {med['full_step']:.3f} s: "
          f"{out['frozen_saving']:.1f}x less per step)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", choices=["demo", "paper", "both"], default="both")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default demo 8, paper 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["demo", "paper"] if args.shapes == "both" else [args.shapes]
    for name in names:
        steps = args.steps or (8 if name == "demo" else 2)
        run(name, steps, n_patients=max(2 * BATCH, BATCH * (steps + 1) // 2 + BATCH))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
