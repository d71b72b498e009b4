"""Training data: a memory-mapped patch cache plus in-fold tabular arrays.

The crop stage writes one compressed `patches.npz` per patient (CONTRACTS.md). Decoding
those per sample would dominate a CPU epoch, so `build_patch_cache` stacks them once into
uncompressed `.npy` files (one per patch kind, `(N, D, H, W)` float32) that are opened
memory-mapped; a batch is then one fancy-indexing read per kind. Tabular arrays come from
`FoldPreprocessor` (fitted on the training rows only) and are held in memory. On a CUDA
device a batch goes to the GPU from pinned (page-locked) memory without blocking
(`to_device`), so reading the next batch overlaps the GPU's work; on the CPU nothing is
copied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmfusion.errors import MMFusionError
from mmfusion.io import atomic_dir

PATCH_KINDS = ("tumour", "node1", "node2", "node3")


def build_patch_cache(patients: Sequence[str], npz_paths: Sequence[str | os.PathLike[str]],
                      cache_dir: str | os.PathLike[str]) -> Path:
    """Stack per-patient `patches.npz` into memory-mappable `.npy` files (atomic).

    Reuses an existing cache whose `patients.json` lists the same patients in order.
    """
    cache = Path(cache_dir)
    index = cache / "patients.json"
    if index.is_file() and json.loads(index.read_text()) == list(patients):
        return cache
    with atomic_dir(cache) as tmp:
        arrays: dict[str, np.ndarray] = {}
        for i, (pid, path) in enumerate(zip(patients, npz_paths, strict=True)):
            try:
                with np.load(path, allow_pickle=False) as npz:
                    data = {k: npz[k] for k in (*PATCH_KINDS, "node_present")}
            except (OSError, KeyError, ValueError) as err:
                raise MMFusionError(f"cannot read patches: {err}", patient=pid,
                                    path=str(path), fix="rerun the crop stage") from err
            if not arrays:
                for kind in PATCH_KINDS:
                    arrays[kind] = np.lib.format.open_memmap(
                        tmp / f"{kind}.npy", mode="w+", dtype=np.float32,
                        shape=(len(patients), *data[kind].shape))
                arrays["node_present"] = np.lib.format.open_memmap(
                    tmp / "node_present.npy", mode="w+", dtype=np.uint8,
                    shape=(len(patients), 3))
            for key, target in arrays.items():
                if data[key].shape != target.shape[1:]:
                    raise MMFusionError(
                        f"{key} patch has shape {data[key].shape}, others {target.shape[1:]}",
                        patient=pid, path=str(path), fix="crop all patients with one config")
                target[i] = data[key]
        for target in arrays.values():
            target.flush()
        del arrays
        (tmp / "patients.json").write_text(json.dumps(list(patients)))
    return cache


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`: for CUDA copied from pinned memory without blocking (the
    copy is ordered on the current stream before the kernels that read it)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def open_patch_cache(cache_dir: str | os.PathLike[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Patient IDs and read-only memory maps of a cache built by `build_patch_cache`."""
    cache = Path(cache_dir)
    patients = json.loads((cache / "patients.json").read_text())
    arrays = {k: np.load(cache / f"{k}.npy", mmap_mode="r")
              for k in (*PATCH_KINDS, "node_present")}
    return patients, arrays


@dataclass
class SplitData:
    """One split's patients.

    `patches` and `node_present` `(M, 3)` are the whole cache (memory-mapped or in memory);
    `cache_rows` `(N,)` are this split's rows in it. `patches` maps each key it serves to an
    array: patch kinds (`tumour`, `node1`..) `(M, D, H, W)` from the patch cache, or, in
    frozen-backbone mode, `{kind}_fmap` `(M, C, d, h, w)` from the feature cache
    (`mmfusion.train.features`). Tabular group arrays `(N, w)` and labels `(N,)` are in
    split order.
    """

    patient_ids: list[str]
    patches: Mapping[str, np.ndarray]
    node_present: np.ndarray
    tables: Mapping[str, np.ndarray]
    labels: np.ndarray
    cache_rows: np.ndarray

    def __len__(self) -> int:
        return len(self.patient_ids)

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """The model's batch dict for `rows` (indices into this split)."""
        rows = np.asarray(rows)
        cache_rows = self.cache_rows[rows]
        order = np.argsort(cache_rows)  # sorted reads are sequential in the memmap
        back = np.argsort(order)
        sorted_rows = cache_rows[order]
        out: dict[str, torch.Tensor] = {}
        for key, arr in self.patches.items():
            block = torch.from_numpy(np.asarray(arr[sorted_rows], dtype=np.float32)[back])
            out[key] = to_device(block.unsqueeze(1) if key in PATCH_KINDS else block, device)
        out["node_present"] = to_device(torch.from_numpy(
            np.asarray(self.node_present[cache_rows], dtype=np.uint8)), device)
        for group, arr in self.tables.items():
            out[group] = to_device(torch.from_numpy(np.asarray(arr[rows], dtype=np.float32)),
                                   device)
        out["label"] = to_device(torch.from_numpy(self.labels[rows].astype(np.float32)),
                                 device)
        return out

    def batches(self, batch_size: int, device: torch.device,
                generator: torch.Generator | None = None, drop_singleton: bool = False
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches in order, or shuffled with `generator`. `drop_singleton` drops a final
        batch of one patient (BatchNorm cannot train on it)."""
        n = len(self)
        order = (torch.randperm(n, generator=generator).numpy() if generator is not None
                 else np.arange(n))
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            if drop_singleton and len(rows) == 1 and n > 1:
                continue
            yield self.batch(rows, device)


def select_rows(patients: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """Row numbers of `wanted` patient IDs in `patients` (error names the missing ones)."""
    where = {p: i for i, p in enumerate(patients)}
    missing = [p for p in wanted if p not in where]
    if missing:
        raise MMFusionError(f"{len(missing)} patient(s) of the fold have no patches: "
                            f"{missing[:5]}", fix="rerun crop, or exclude them in the cohort")
    return np.array([where[p] for p in wanted], dtype=np.int64)
