"""Numbers and booleans given on Snakemake's command line inside a section.

`snakemake --config 'folds={repeats: 2}'` parses the nested value with YAML's BaseLoader,
which leaves every scalar a string (`{'repeats': '2'}`), and the schema then refuses it.
`coerce_cli_scalars` turns such strings back into what the schema asks for (integer, number,
boolean), and leaves everything else alone, so nested overrides work like top-level ones.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

TRUE, FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _coerce(value: str, types: set[str]) -> Any:
    text = value.strip()
    if "integer" in types:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "boolean" in types and text.lower() in TRUE | FALSE:
        return text.lower() in TRUE
    if "null" in types and text.lower() in {"null", "~", "none"}:
        return None
    return value


def coerce_cli_scalars(config: MutableMapping[str, Any], schema: dict[str, Any]) -> None:
    """In place: every string value where `schema` (JSON Schema, nested `properties`) asks
    for an integer, number or boolean, converted when it parses as one."""
    props = schema.get("properties", {})
    for key, value in list(config.items()):
        node = props.get(key)
        if not isinstance(node, dict):
            continue
        if isinstance(value, MutableMapping):
            coerce_cli_scalars(value, node)
        elif isinstance(value, str):
            config[key] = _coerce(value, _types(node))
