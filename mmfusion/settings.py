"""Config sections enter the package once, as frozen dataclasses that refuse unknown keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mmfusion.errors import ConfigError


def checked_section(cls: type, section: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """A copy of config section `name` whose keys are all fields of dataclass `cls`.

    Raises:
        ConfigError: naming the unknown keys and listing the valid ones.
    """
    section = dict(section or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"unknown {name} setting(s): {unknown}", fix=f"use only {sorted(known)}")
    return section
