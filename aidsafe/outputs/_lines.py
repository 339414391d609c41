"""Read a JSONL file of records line by line: typed, streaming, with ``file:line`` on every problem.

One reader serves every kind of record file (generation records, judged records, pairwise
verdicts, ...): it is generic over the Pydantic model a line must validate as.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import InputError

__all__ = [
    "Line",
    "LineModel",
    "PathLike",
    "Problem",
    "bad_line",
    "first_line_is",
    "first_problem",
    "lines",
    "parse_line",
    "read_record_lines",
    "read_records",
]

M = TypeVar("M", bound=BaseModel)
PathLike = str | os.PathLike[str]
LineModel = type[M] | Callable[[dict[str, Any]], type[M]]
"""What a line must be: a model class, or a function that picks the class from the decoded object
(raising ``ValueError`` with the reason when none fits, e.g. a plain record where a judged one is needed)."""


@dataclass(frozen=True, slots=True)
class Line:
    """One physical line of a JSONL file: its number, byte offset and raw bytes."""

    number: int
    offset: int
    raw: bytes

    @property
    def blank(self) -> bool:
        return not self.raw.strip()

    @property
    def complete(self) -> bool:
        return self.raw.endswith(b"\n")


def lines(path: Path) -> Iterator[Line]:
    """Yield every physical line of ``path`` with its 1-based number and byte offset."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield Line(number, offset, raw)
            offset += len(raw)


def first_problem(exc: ValidationError) -> str:
    """A one-line description of a validation error."""
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err.get("loc", ()))
    return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a line is not a record."""

    message: str
    not_json: bool
    """The line is not JSON at all: what a write cut short by a crash leaves."""


def parse_line(line: Line, model: LineModel[M]) -> M | Problem:
    """Validate one line as ``model``; return the problem instead of raising it."""
    if isinstance(model, type):
        try:
            return model.model_validate_json(line.raw)
        except ValidationError as exc:
            return Problem(first_problem(exc), any(err.get("type") == "json_invalid" for err in exc.errors()))
    try:
        data = json.loads(line.raw)
    except (ValueError, RecursionError) as exc:
        return Problem(f"invalid JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", True)
    if not isinstance(data, dict):
        return Problem("not a JSON object", False)
    try:
        return model(data).model_validate(data)
    except ValidationError as exc:
        return Problem(first_problem(exc), False)
    except ValueError as exc:
        return Problem(str(exc), False)


def bad_line(path: PathLike, line: Line, problem: Problem, what: str, hint: str = "") -> InputError:
    """The error for a line that is not what the file should hold."""
    return InputError(f"not {what} ({problem.message}){hint}", file=path, line=line.number)


def read_records(path: PathLike, model: LineModel[M], *, what: str = "an aidsafe record") -> Iterator[M]:
    """Stream the records of a JSONL file, each validated as ``model``; blank lines are skipped.

    Any bad line - even a torn last one - raises :class:`InputError` naming the file and line
    (``what`` says what the line should have been). Files being resumed are repaired first by
    :func:`~aidsafe.outputs.scan_output`.
    """
    for _, record in read_record_lines(path, model, what=what):
        yield record


def read_record_lines(path: PathLike, model: LineModel[M], *, what: str = "an aidsafe record") -> Iterator[tuple[Line, M]]:
    """:func:`read_records`, with each record's :class:`Line` (to copy it verbatim)."""
    file = Path(path)
    if not file.is_file():
        raise InputError("records file not found; check the path", file=path)
    for line in lines(file):
        if line.blank:
            continue
        parsed = parse_line(line, model)
        if isinstance(parsed, Problem):
            raise bad_line(path, line, parsed, what)
        yield line, parsed


def first_line_is(path: PathLike, model: LineModel[Any]) -> bool:
    """Whether the first non-blank line of ``path`` validates as ``model`` (to tell kinds of record files apart)."""
    file = Path(path)
    if not file.is_file():
        return False
    for line in lines(file):
        if not line.blank:
            return not isinstance(parse_line(line, model), Problem)
    return False
