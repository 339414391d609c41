"""Exceptions that carry the place at fault (file, line, field) so users can act on them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["AidsafeError", "ConfigError", "InputError", "ModelCallError"]


class AidsafeError(Exception):
    """Base class of every error aidsafe raises on purpose."""


class _LocatedError(AidsafeError):
    """An error tied to a place in a file: ``file:line: field: message``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class ConfigError(_LocatedError):
    """A graph, template or policy file is malformed."""


class InputError(_LocatedError):
    """An input file of prompts is malformed."""


class ModelCallError(AidsafeError):
    """A model call failed after its retries (network, server or backend error)."""
