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


def parse_settings_json(text: str, option: str) -> dict[str, Any]:
    """A config section passed on the command line as JSON (`{}` or empty: defaults)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{option} is not JSON: {err}",
                          fix=f"pass the config section as a JSON object to {option}") from err
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value
