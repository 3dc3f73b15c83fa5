"""The agent's exception hierarchy and the `Problem` record every validator reports.

Library errors are wrapped at the boundary (`raise ConfigError(...) from exc`) so callers
only ever catch `AgentError` subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One configuration problem, printed as `FILE:LINE: key.path: message`; a warning (a
    leniency taken, a unit mismatch) as `FILE:LINE: key.path: warning: message`. Warnings
    never make a configuration unusable."""

    file: str
    line: int
    key: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        # One problem, one line: library messages sometimes span several.
        message = " ".join(self.message.split())
        label = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}: {self.key}: {label}{message}"


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration (YAML, DBC files, mappings, keys) is unusable; carries every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StoreError(AgentError):
    """A small on-disk state store (replay ids, timers, the charging schedule) failed."""
