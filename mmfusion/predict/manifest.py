"""The bundle's `manifest.json`: sha256 of every other file, written last, checked first."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mmfusion.errors import ConfigError
from mmfusion.io import write_text_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mmfusion.bundle"
MANIFEST_VERSION = 1


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listed(root: Path) -> list[Path]:
    """The bundle's files: all but the manifest and hidden files (a workflow engine's own
    marker, such as Snakemake's `.snakemake_timestamp`; nothing reads them)."""
    return [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
            and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def write_manifest(folder: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """`manifest.json` listing every file under `folder` (relative POSIX paths, sorted) with
    its sha256 and size, plus `info`. Returns the manifest."""
    root = Path(folder)
    files = {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in _listed(root)}
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **info, "files": files}
    write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify_manifest(folder: str | Path) -> dict[str, Any]:
    """Check every file of the bundle against its manifest before anything is loaded.

    Raises:
        ConfigError: no manifest, a file missing, added or changed (sha256 or size).
    """
    root = Path(folder)
    path = root / MANIFEST
    if not path.is_file():
        raise ConfigError("not a model bundle (no manifest.json)", path=str(root),
                          fix="build one with `mmfusion bundle build` (rule bundle_model)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"unreadable bundle manifest: {err}", path=str(path)) from err
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ConfigError(f"not a {MANIFEST_FORMAT} manifest of version {MANIFEST_VERSION}",
                          path=str(path), fix="rebuild the bundle with this mmfusion")
    listed = manifest.get("files", {})
    present = {p.relative_to(root).as_posix() for p in _listed(root)}
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing:
        raise ConfigError(f"bundle file(s) {missing[:5]} listed in the manifest are missing",
                          path=str(root), fix="copy the whole bundle folder again")
    if extra:
        raise ConfigError(f"bundle holds file(s) {extra[:5]} not in its manifest",
                          path=str(root), fix="remove them or copy the bundle again")
    for name, entry in sorted(listed.items()):
        target = root / name
        if target.stat().st_size != entry["bytes"] or sha256_file(target) != entry["sha256"]:
            raise ConfigError("checksum mismatch: the file changed since the bundle was built "
                              f"(manifest sha256 {entry['sha256'][:12]}…)", path=str(target),
                              fix="copy the bundle again from its source; never edit it")
    return manifest
