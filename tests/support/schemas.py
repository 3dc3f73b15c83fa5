"""The payload schemas of docs/schemas/ (JSON Schema draft 2020-12), for checking what the
daemon really published: a schema and the code cannot drift apart unnoticed."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from tests.support.configs import ROOT

SCHEMAS = ROOT / "docs" / "schemas"
# Topic suffix (after the prefix) -> schema name; `commands/response` also covers a request's
# own MQTT 5 response topic.
BY_TOPIC = {
    "status": "status",
    "telemetry": "telemetry",
    "state": "state",
    "events": "events",
    "commands/response": "command-response",
    "health": "health",
}


# jsonschema checks a `format` only when a FormatChecker is passed AND the checker for that
# format is installed (date-time needs rfc3339-validator, from the `format-nongpl` extra);
# otherwise it passes any string in silence. Every format the schemas use must be checked.
FORMATS = FormatChecker()


def formats_used(node: Any) -> set[str]:
    """Every `format` named anywhere in a schema document."""
    if isinstance(node, dict):
        found = {node["format"]} if isinstance(node.get("format"), str) else set()
        for value in node.values():
            found |= formats_used(value)
        return found
    if isinstance(node, list):
        return set().union(*map(formats_used, node)) if node else set()
    return set()


@cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    unchecked = formats_used(loaded) - set(FORMATS.checkers)
    assert not unchecked, (
        f"{name} schema: formats {sorted(unchecked)} would pass unchecked: install the dev "
        "extra (jsonschema[format-nongpl])"
    )
    return loaded


def validator(name: str, definition: str | None = None) -> Draft202012Validator:
    """The schema `name`, or one of its `$defs` (e.g. the last will alone)."""
    document = schema(name)
    if definition is not None:
        document = {**document, "oneOf": None, "$ref": f"#/$defs/{definition}"}
        document = {k: v for k, v in document.items() if v is not None}
        for key in ("type", "properties", "required", "additionalProperties", "allOf", "if"):
            document.pop(key, None)
        document.pop("then", None)
        document.pop("else", None)
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document, format_checker=FORMATS)


def errors(name: str, payload: Any, definition: str | None = None) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator(name, definition).iter_errors(payload)
    ]


def validate(name: str, payload: Any, definition: str | None = None) -> None:
    """Fail with every mismatch of `payload` against the schema (or one of its $defs)."""
    problems = errors(name, payload, definition)
    assert not problems, f"{name} schema: {problems}\n{json.dumps(payload)[:2000]}"
