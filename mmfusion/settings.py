"""Config sections enter the package once, as frozen dataclasses that refuse unknown keys.

Every default is defined once, in the config schema (`mmfusion/data/config.schema.yaml`,
which the workflow validates the config against and fills omitted keys from; the file
`workflow/schemas/config.schema.yaml` links to it). Settings dataclasses take their field
defaults from there through `schema_defaults`, so an omitted key means the same value in
the workflow, on the command line and in the Python API.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mmfusion.errors import ConfigError

SCHEMA_PATH = Path(__file__).parent / "data" / "config.schema.yaml"

T = TypeVar("T")


@functools.cache
def config_schema() -> dict[str, Any]:
    """The config JSON Schema (YAML), loaded once."""
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text())


def section_schema(section: str) -> dict[str, Any]:
    """Schema of a config section by dotted path, e.g. `crop` or `train.augment`."""
    node = config_schema()
    for part in section.split("."):
        try:
            node = node["properties"][part]
        except KeyError as err:
            raise KeyError(f"no config section {section!r} in {SCHEMA_PATH}") from err
    return node


def section_defaults(section: str) -> dict[str, Any]:
    """`{key: default}` of the section's keys that have a schema default (deep copies)."""
    props = section_schema(section).get("properties", {})
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}


def _frozen(value: Any) -> Any:
    """Lists as tuples (recursively), so a schema default can be a frozen field default."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def schema_defaults(section: str, *, unread: Collection[str] = ()) -> Callable[[type[T]], type[T]]:
    """Class decorator (put it under `@dataclass`): each field named like a key of config
    section `section` gets that key's schema default (lists as tuples, mappings through
    a default factory).

    A field may not carry a default of its own where the schema has one (defaults are
    defined once), and every key of the section must be a field unless listed in `unread`
    (a key the workflow reads, not this class), so no config key is silently ignored.
    The class records those keys as `schema_unread`. Unless the class defines its own, it
    gets `from_config(section_values)`, which drops the unread keys and refuses unknown ones.
    """

    def apply(cls: type[T]) -> type[T]:
        defaults = section_defaults(section)
        fields = set(cls.__dict__.get("__annotations__", {}))
        missing = sorted(set(section_schema(section).get("properties", {})) - fields
                         - set(unread))
        if missing:
            raise TypeError(f"{cls.__name__} has no field for {section} key(s) {missing}")
        props = section_schema(section).get("properties", {})
        for name, value in defaults.items():
            if name not in fields or "properties" in props[name]:
                continue  # a nested section is a settings class of its own
            if name in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{name} has a default in code; the schema "
                                f"({section}.{name}) is the only place for it")
            if isinstance(value, dict):
                setattr(cls, name, dataclasses.field(
                    default_factory=functools.partial(copy.deepcopy, value)))
            else:
                setattr(cls, name, _frozen(value))
        cls.schema_unread = frozenset(unread)  # type: ignore[attr-defined]
        if "from_config" not in cls.__dict__:
            def from_config(klass: type[T], values: Mapping[str, Any] | None) -> T:
                """Build from config section `section`; unknown keys are an error."""
                values = {k: v for k, v in (values or {}).items() if k not in unread}
                return klass(**checked_section(klass, values, section))

            cls.from_config = classmethod(from_config)  # type: ignore[attr-defined]
        return cls

    return apply


def check_choice(key: str, value: Any, allowed: Collection[Any]) -> None:
    """The one "must be one of" check of every settings class.

    Raises:
        ConfigError: naming the key, the value given and the values allowed.
    """
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}",
                          fix=f"set {key} to one of {list(allowed)}")


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


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A validated copy of a whole config with every omitted key filled from the schema,
    exactly as the workflow's `validate(config, schema)` does (what the workflow runs).

    Raises:
        ConfigError: the first schema violation, with the key path.
    """
    import jsonschema
    from jsonschema import validators

    base = validators.validator_for(config_schema())
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    filling = validators.extend(base, {"properties": set_defaults})
    resolved = copy.deepcopy(dict(config))
    try:
        filling(config_schema()).validate(resolved)
    except jsonschema.ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "anyOf" and err.context:  # e.g. cohort.dicom_root or .manifest
            keys = sorted({".".join(str(p) for p in (*err.absolute_path, *sub.relative_path))
                           for sub in err.context})
            raise ConfigError(f"config key {where}: set one of {' or '.join(keys)}",
                              fix=f"see {SCHEMA_PATH.name} for what each key holds") from err
        raise ConfigError(f"config key {where}: {err.message}",
                          fix=f"see {SCHEMA_PATH.name} for the allowed values") from err
    return resolved


RESOLVED_HEADER = """\
# The configuration this run used: the user's config file (or, with no --configfile,
# the demo's config.yaml) with every omitted key filled from the config schema
# (workflow/schemas/config.schema.yaml). Written by the workflow at the start of each run;
# editing it changes nothing.
"""


def resolved_config_text(config: Mapping[str, Any]) -> str:
    """The resolved config as commented YAML, keys in the order they were given."""
    import yaml

    class Dumper(yaml.SafeDumper):
        """Mappings as blocks, lists of scalars on one line, long regexes unwrapped."""

    def mapping(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
        return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=False)

    def sequence(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
        flat = all(not isinstance(v, (dict, list, tuple)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)

    Dumper.add_representer(dict, mapping)
    Dumper.add_representer(list, sequence)
    Dumper.add_representer(tuple, sequence)
    return RESOLVED_HEADER + yaml.dump(dict(config), Dumper=Dumper, sort_keys=False,
                                       width=4096, allow_unicode=True)


def write_resolved_config(config: Mapping[str, Any], path: str | Path) -> bool:
    """Write `resolved_config_text(config)` to `path` (atomically) unless it already holds
    exactly that, so its time stamp changes only when the configuration does. Returns
    whether it wrote."""
    from mmfusion.io import write_text_atomic

    text = resolved_config_text(config)
    target = Path(path)
    if target.is_file() and target.read_text() == text:
        return False
    write_text_atomic(target, text)
    return True
