"""Exceptions that carry the place at fault (file, line, field) so users can act on them."""

from __future__ import annotations

import os

__all__ = [
    "AidsafeError",
    "ConfigError",
    "ConfigMismatchError",
    "InputError",
    "JobInterrupted",
    "ModelCallError",
    "OutputInUseError",
]


class AidsafeError(Exception):
    """Base class of every error aidsafe raises on purpose."""


class _LocatedError(AidsafeError):
    """An error tied to a place in a file: ``file:line: field: message``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = os.fspath(file) if file is not None else None
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


class OutputInUseError(AidsafeError):
    """Another live run is writing the same output."""


class ConfigMismatchError(AidsafeError):
    """An output was written with another configuration (graph, policies, templates, models,
    sampling); resuming it would mix records of both."""


class JobInterrupted(AidsafeError):
    """A file job was interrupted (Ctrl-C); every record written so far is safe."""

    def __init__(self, output: str, safe: int, total: int | None = None) -> None:
        self.output = output
        self.safe = safe
        self.total = total
        of = f" of {total}" if total is not None else ""
        super().__init__(f"interrupted: {safe}{of} records are safe in {output}; run the same command to continue")
