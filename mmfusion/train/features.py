"""Frozen-backbone mode: backbone feature maps computed once per cohort (`model.freeze_backbone`).

With a fixed (pretrained MedicalNet) backbone, the 3D CNNs give every patient the same
feature maps in every epoch, so `build_feature_cache` runs them once (eval mode, no
gradients, batched) over each cached patient's un-augmented patches and stores the maps;
training then reads `{kind}_fmap` arrays instead of patches and trains MMRL, HGA, CFD and
the heads only (`mmfusion.train.loop`). Absent nodes get all-zero maps, exactly as
`MMFusionModel.encode_images` gives them.

Cache layout (one folder, written to a temporary folder and renamed):
`tumour_fmap.npy`, `node1_fmap.npy`, `node2_fmap.npy`, `node3_fmap.npy` (float32
`(N, C, d, h, w)`, memory-mappable), `node_present.npy` (uint8 `(N, 3)`), `patients.json`
(IDs in row order), `backbone.pt` (state dict of `MMFusionModel.backbones`, loaded with
`weights_only=True`), `settings.json` (`model`: the settings that determine the maps,
`patch_cache`: a fingerprint of the patch cache they came from; `info`: where they came
from and the `amp` mode they were computed at (`train.amp`: on CUDA the backbones run
under autocast; informational, a cache is reused whatever its amp); written last).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmfusion.errors import ConfigError, MMFusionError
from mmfusion.io import atomic_dir
from mmfusion.model.mmfusion import MMFusionModel, ModelConfig
from mmfusion.train.dataset import PATCH_KINDS, open_patch_cache, to_device
from mmfusion.train.device import Precision

log = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 1
FMAP_KEYS = tuple(f"{kind}_fmap" for kind in PATCH_KINDS)
BUILD_HINT = ("run `mmfusion train features --cache PATCH_CACHE --model-settings JSON "
              "--train-settings JSON --out FOLDER` with this run's model and train settings")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file (memoised per path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def map_settings(model_cfg: ModelConfig, seed: int) -> dict[str, Any]:
    """The model settings that determine the feature maps (compared on reuse and training).

    The pretrained file is identified by size and SHA-256 (not its path, so a copied file
    still matches). Without weights the backbone is random and the seed decides it.
    """
    settings: dict[str, Any] = {"version": FEATURE_CACHE_VERSION, "depth": model_cfg.depth,
                                "base_width": model_cfg.base_width,
                                "shared_backbone": model_cfg.shared_backbone,
                                "pretrained_size": None, "pretrained_sha256": None,
                                "init_seed": None}
    if model_cfg.pretrained:
        path = Path(model_cfg.pretrained)
        if not path.is_file():
            raise ConfigError("pretrained backbone weights not found", path=str(path),
                              fix="set `model.pretrained` to a local MedicalNet "
                                  "resnet_{depth}_23dataset.pth, or to an empty string")
        stat = path.stat()
        settings["pretrained_size"] = stat.st_size
        settings["pretrained_sha256"] = _sha256(str(path.resolve()), stat.st_size,
                                                stat.st_mtime_ns)
    else:
        settings["init_seed"] = int(seed)
    return settings


def patch_cache_fingerprint(patch_cache: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and modification time of each file of a patch cache (it is rebuilt by rename,
    so a rebuilt cache has new times)."""
    cache = Path(patch_cache)
    names = ["patients.json", *(f"{k}.npy" for k in (*PATCH_KINDS, "node_present"))]
    out: dict[str, Any] = {}
    for name in names:
        path = cache / name
        if not path.is_file():
            raise MMFusionError("not a patch cache (a file is missing)", path=str(path),
                                fix="run `mmfusion train cache`")
        stat = path.stat()
        out[name] = [stat.st_size, stat.st_mtime_ns]
    return out


def warn_random_backbone(model_cfg: ModelConfig) -> None:
    """Log a warning when a frozen backbone has no pretrained weights (random features)."""
    if not model_cfg.pretrained:
        log.warning("model.freeze_backbone without model.pretrained: the frozen backbone "
                    "keeps its random initialisation, so the image features are random "
                    "projections; set model.pretrained to a local MedicalNet "
                    "resnet_%d_23dataset.pth (base_width 64)", model_cfg.depth)


def _read_settings(features: Path) -> dict[str, Any] | None:
    try:
        return json.loads((features / "settings.json").read_text())
    except (OSError, ValueError):
        return None


def build_feature_cache(patch_cache: str | os.PathLike[str], model_cfg: ModelConfig,
                        seed: int, out: str | os.PathLike[str], *, batch_size: int = 12,
                        device: str | torch.device = "cpu", progress: bool = True,
                        precision: Precision | None = None) -> Path:
    """Run the backbone(s) once over every patient of `patch_cache`; write the cache `out`.

    Reuses an existing cache whose `settings.json` matches (same map settings, same patch
    cache); otherwise builds a new one in a temporary folder and renames it onto `out`.
    The backbone is `MMFusionModel`'s own (initialised under `seed`, then the pretrained
    weights), in eval mode, so the maps equal `encode_images` on the same patches
    (under `precision`'s autocast when given; stored in float32).
    """
    features = Path(out)
    expected = {"model": map_settings(model_cfg, seed),
                "patch_cache": patch_cache_fingerprint(patch_cache)}
    found = _read_settings(features)
    if found is not None and {k: found.get(k) for k in expected} == expected:
        return features
    warn_random_backbone(model_cfg)
    device = torch.device(device)
    precision = precision or Precision()
    patients, arrays = open_patch_cache(patch_cache)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the variant does not touch the backbones; base1 builds the fewest other modules
        model = MMFusionModel(dataclasses.replace(model_cfg, variant="base1"), {})
    model = model.to(device).eval()
    with atomic_dir(features) as tmp:
        n = len(patients)
        maps: dict[str, np.ndarray] = {}
        bar = tqdm(total=n, desc="feature maps", unit="patient", disable=not progress,
                   leave=False)
        step = max(1, batch_size)
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            batch = {k: to_device(torch.from_numpy(np.array(arrays[k][rows], dtype=np.float32))
                                  .unsqueeze(1), device) for k in PATCH_KINDS}
            batch["node_present"] = to_device(torch.from_numpy(
                np.array(arrays["node_present"][rows], dtype=np.uint8)), device)
            with torch.no_grad(), precision.autocast():
                fmaps = model.encode_images(batch)
            for key in FMAP_KEYS:
                block = fmaps[key].float().cpu().numpy()
                if key not in maps:
                    maps[key] = np.lib.format.open_memmap(
                        tmp / f"{key}.npy", mode="w+", dtype=np.float32,
                        shape=(n, *block.shape[1:]))
                maps[key][rows] = block
            bar.update(rows.stop - rows.start)
        bar.close()
        for target in maps.values():
            target.flush()
        del maps
        np.save(tmp / "node_present.npy", np.asarray(arrays["node_present"], dtype=np.uint8))
        (tmp / "patients.json").write_text(json.dumps(list(patients)))
        torch.save({k: v.detach().cpu() for k, v in model.backbones.state_dict().items()},
                   tmp / "backbone.pt")
        info = {"patch_cache_path": str(Path(patch_cache).resolve()),
                "pretrained_path": model_cfg.pretrained, "n_patients": n,
                "amp": precision.mode}
        (tmp / "settings.json").write_text(json.dumps({**expected, "info": info}, indent=1))
    return features


def check_feature_cache(features: str | os.PathLike[str] | None, model_cfg: ModelConfig,
                        seed: int) -> dict[str, Any]:
    """The settings of feature cache `features`, after checking it fits `model_cfg`/`seed`.

    Raises:
        ConfigError: no cache given although `model.freeze_backbone` is set, or one given
            without it, or its maps come from other backbone settings.
        MMFusionError: the folder is not a complete feature cache.
    """
    if not model_cfg.freeze_backbone:
        raise ConfigError("a feature cache was given but model.freeze_backbone is false",
                          fix="set model.freeze_backbone: true, or train from the patch "
                              "cache without --features")
    if features is None:
        raise ConfigError("model.freeze_backbone needs the backbone feature cache "
                          "(--features)", fix=BUILD_HINT)
    folder = Path(features)
    found = _read_settings(folder)
    missing = [name for name in ("patients.json", "node_present.npy", "backbone.pt",
                                 *(f"{k}.npy" for k in FMAP_KEYS))
               if not (folder / name).is_file()]
    if found is None or missing:
        raise MMFusionError(f"not a complete feature cache (missing "
                            f"{missing or ['settings.json']})", path=str(folder),
                            fix=BUILD_HINT)
    expected = map_settings(model_cfg, seed)
    stored = found.get("model", {})
    differ = sorted(k for k in set(expected) | set(stored) if expected.get(k) != stored.get(k))
    if differ:
        detail = ", ".join(f"{k}: cache {stored.get(k)!r} vs run {expected.get(k)!r}"
                           for k in differ)
        raise ConfigError(f"the feature cache was built with other backbone settings "
                          f"({detail})", path=str(folder / "settings.json"), fix=BUILD_HINT)
    return found


def open_feature_cache(features: str | os.PathLike[str]
                       ) -> tuple[list[str], dict[str, np.ndarray]]:
    """Patient IDs and read-only memory maps (`{kind}_fmap`, `node_present`) of a cache."""
    folder = Path(features)
    try:
        patients = json.loads((folder / "patients.json").read_text())
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r")
                  for k in (*FMAP_KEYS, "node_present")}
    except (OSError, ValueError) as err:
        raise MMFusionError(f"cannot read the feature cache: {err}", path=str(folder),
                            fix=BUILD_HINT) from err
    return patients, arrays


def load_frozen_backbone(model: MMFusionModel, features: str | os.PathLike[str],
                         device: torch.device) -> None:
    """Give `model` the cache's backbone weights, freeze them and put them in eval mode."""
    path = Path(features) / "backbone.pt"
    state = torch.load(path, map_location=device, weights_only=True)
    try:
        model.backbones.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"the cached backbone does not fit the model: "
                          f"{str(err).splitlines()[0]}", path=str(path), fix=BUILD_HINT) from err
    model.backbones.requires_grad_(False)
    model.backbones.eval()
