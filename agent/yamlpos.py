"""YAML loading that remembers where each key stood, so problems can name FILE:LINE.

Two deliberate differences from PyYAML's `safe_load`:
- Only `true`/`false` are booleans (YAML 1.2). Under YAML 1.1 a DBC choice name such as
  `ON`, `OFF`, `YES` or `NO` used as a `map` key would silently become a boolean.
- Duplicate keys in a mapping are reported instead of the last one silently winning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans."""


# Copy the resolver table before editing it: it is a class attribute shared with SafeLoader.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(slots=True)
class Positions:
    """1-based line of every key (mappings) and item (sequences) of a document."""

    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int:
        """The line of `path`, or of its nearest ancestor that exists in the document."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1


@dataclass(frozen=True, slots=True)
class YamlIssue:
    """A problem found while reading the YAML itself (syntax, duplicate key)."""

    line: int
    path: KeyPath
    message: str


def load(text: str) -> tuple[Any, Positions, list[YamlIssue]]:
    """Parse one YAML document. Syntax errors come back as issues, never as exceptions."""
    positions = Positions()
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        return None, positions, [YamlIssue(_line_at(text, exc), (), f"YAML error: {exc}")]
    try:
        node = loader.get_single_node()
        if node is None:
            return None, positions, []
        issues: list[YamlIssue] = []
        _walk(node, (), positions, issues)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        line, message = plain_words(exc)
        return None, positions, [YamlIssue(line, (), f"YAML syntax error: {message}")]
    except yaml.YAMLError as exc:
        return None, positions, [YamlIssue(_line_at(text, exc), (), f"YAML error: {exc}")]
    finally:
        loader.dispose()
    return data, positions, issues


def plain_words(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    """PyYAML's parser-speak (`expected <block end>, but found '?'`) as a line and plain words."""
    problem = exc.problem or str(exc)
    at = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
    opened = exc.context_mark.line + 1 if exc.context_mark is not None else at
    if problem.startswith("expected <block end>"):
        return at, (
            "this line is indented differently from the lines above it "
            "(keys of one mapping, and the dashes of one list, start in the same column)"
        )
    if problem == "mapping values are not allowed here":
        return at, (
            "unexpected ':' here: this line may be indented deeper than the key above it, "
            "or a value containing ': ' needs quotes"
        )
    if "'\\t'" in problem or "\t" in problem:
        return at, "a tab character: YAML indents with spaces only"
    if problem.startswith(("expected ',' or ']'", "expected ',' or '}'")):
        bracket = "[" if "]" in problem else "{"
        return opened, f"the '{bracket}' opened on this line is not closed"
    if "quoted scalar" in (exc.context or "") and "end of stream" in problem:
        return opened, "the quote opened on this line is not closed"
    if problem.startswith("found undefined alias"):
        return at, f"{problem} (a '*' starts an alias; quote a value that begins with '*')"
    return at, problem


def _walk(node: yaml.Node, path: KeyPath, positions: Positions, issues: list[YamlIssue]) -> None:
    positions.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key: str | int = _key_of(key_node)
            line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in seen:
                issues.append(
                    YamlIssue(line, child, f"duplicate key (first given on line {seen[key]})")
                )
                continue
            seen[key] = line
            positions.lines[child] = line
            _walk(value_node, child, positions, issues)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), positions, issues)


def _key_of(node: yaml.Node) -> str | int:
    """The key as pydantic's error locations spell it (ints stay ints, the rest text)."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:int":
            try:
                return int(node.value, 0)
            except ValueError:
                return str(node.value)
        return str(node.value)
    return str(node.value)


def _line_at(text: str, exc: yaml.YAMLError) -> int:
    position = getattr(exc, "position", None)
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 1
