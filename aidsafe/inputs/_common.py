"""What every format reader shares: the item and spec types, line decoding, record checks.

A reader turns its file into a stream of :data:`Result` values (a :class:`PromptItem`,
or the :class:`~aidsafe.errors.InputError` of a bad line); it decodes lines with
:func:`decoded_lines` and builds items with :func:`checked_item`, so every format reports
the same problems in the same words. :func:`dedup` and the problem formatting act on
those streams after the reader.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeAlias

from ..errors import InputError

PROMPT_FIELD_HINT = "use --prompt-field to name the field that holds the prompt"
"""The advice appended to every "no prompt field/column" error."""

MAX_REPORTED = 20
"""How many problems :func:`format_problems` lists before ``... and N more``."""

_BOM = "\ufeff"


def default_id(number: int) -> str:
    """The id of the ``number``-th record of a file that has no id field: ``str(number)``.

    The one id rule of every reader of a file (``generate``'s inputs, ``aidsafe import``, the
    evaluation data): records are numbered 1, 2, 3 ... in file order - the non-blank lines of
    JSON Lines or text, the data rows of a CSV (not the header; a row is one however many lines
    its quoted fields span), the rows of a Parquet file or a dataset. Blank lines are not
    records; a bad record counts (a ``--lenient`` read that skips it shifts no later id).
    """
    return str(number)


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One user prompt read from an input file.

    Attributes:
        id: The record id (the id field's value, or :func:`default_id` of its record number).
        prompt: The user prompt, verbatim; it is never rendered as a template.
        source: The input file path as given by the caller.
        line: Where errors point: the 1-based line number (JSONL, text, CSV via the csv
            reader's ``line_num``, the row's last line), or the 1-based row of a Parquet file or
            a Hugging Face dataset.
        extra: The record's values of the other fields the caller asked for
            (``read_prompts(extra_fields=...)``), as they are in the file; a field the record
            lacks (or a CSV row too short to reach) is absent. Not compared.
    """

    id: str
    prompt: str
    source: str
    line: int
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)


Result: TypeAlias = "PromptItem | InputError"
"""What a format reader yields per record: a valid item, or the line-level problem."""


@dataclass(frozen=True, slots=True)
class Spec:
    """What to pull out of each record, and where the records come from."""

    source: str
    prompt_field: str
    id_field: str | None
    unit: str = "line"
    lenient: bool = False
    extra_fields: tuple[str, ...] = ()
    """Other fields to carry into :attr:`PromptItem.extra`, unchecked."""


def dedup(results: Iterable[Result], id_field: str) -> Iterator[Result]:
    """Pass results through, turning the second occurrence of an id into a problem."""
    first_line: dict[str, int] = {}
    for result in results:
        if isinstance(result, PromptItem):
            seen = first_line.setdefault(result.id, result.line)
            if seen != result.line:
                yield InputError(
                    f"duplicate id {result.id!r} (first seen at line {seen}); ids must be unique",
                    file=result.source,
                    line=result.line,
                    field=id_field,
                )
                continue
        yield result


def format_problems(problems: Sequence[InputError], *, most: int = MAX_REPORTED) -> str:
    """One ``file:line: field: message`` line per problem, at most ``most``, then ``... and N more``."""
    lines = [str(problem) for problem in problems[:most]]
    if len(problems) > most:
        lines.append(f"... and {len(problems) - most} more")
    return "\n".join(lines)


def report_problems(
    problems: Sequence[InputError], *, stream: TextIO | None = None, most: int = MAX_REPORTED
) -> None:
    """Print the skipped lines of a lenient read to ``stream`` (default: stderr); nothing if none."""
    if not problems:
        return
    noun = "line" if len(problems) == 1 else "lines"
    text = f"skipped {len(problems)} bad input {noun}:\n{format_problems(problems, most=most)}"
    print(text, file=stream if stream is not None else sys.stderr)


# --- decoding -----------------------------------------------------------------------


def decoded_lines(path: Path, source: str) -> Iterator[tuple[int, str, InputError | None]]:
    """Yield ``(line_number, text, problem)`` for each physical line, line endings kept.

    The file is read in binary and decoded line by line so that invalid UTF-8 and
    NUL bytes are reported with the line they are on. A leading BOM is dropped. For a
    bad line, ``problem`` is its error and ``text`` a stand-in (bad bytes and NULs
    replaced by U+FFFD) that keeps the line non-blank.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            problem = _line_problem(raw, source, number)
            if problem is None:
                text = raw.decode("utf-8")
            else:
                text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
            yield number, (text.removeprefix(_BOM) if number == 1 else text), problem


def _line_problem(raw: bytes, source: str, number: int) -> InputError | None:
    """The error of one raw line that is binary (a NUL byte) or not UTF-8, else ``None``."""
    if b"\x00" in raw:
        return InputError(
            "binary data (NUL byte) found; this does not look like a text file of prompts",
            file=source,
            line=number,
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InputError(
            f"invalid UTF-8 (byte {raw[exc.start:exc.start + 1]!r} at column {exc.start + 1}); "
            "re-save the file as UTF-8",
            file=source,
            line=number,
        )
    return None


# --- record validation --------------------------------------------------------------


def checked_item(record: Mapping[str, Any], spec: Spec, line: int, default_id: str) -> Result:
    """Validate one record into its :class:`PromptItem`, or return its line-level error."""
    try:
        return _make_item(record, spec, line, default_id)
    except InputError as exc:
        return exc


def _make_item(record: Mapping[str, Any], spec: Spec, line: int, default_id: str) -> PromptItem:
    """Validate one record's prompt and id and build its :class:`PromptItem`."""
    return PromptItem(
        id=_record_id(record, spec, line, default_id),
        prompt=_record_prompt(record, spec, line),
        source=spec.source,
        line=line,
        extra={name: record[name] for name in spec.extra_fields if record.get(name) is not None},
    )


def _record_prompt(record: Mapping[str, Any], spec: Spec, line: int) -> str:
    """Return the record's prompt, raising if it is missing, not a string, blank or not UTF-8."""
    field = spec.prompt_field
    if field not in record:
        fields = ", ".join(repr(name) for name in sorted(record, key=str))
        raise InputError(
            f"missing prompt field {field!r}; this {spec.unit} has fields [{fields}]; "
            f"{PROMPT_FIELD_HINT}",
            file=spec.source,
            line=line,
            field=field,
        )
    value = record[field]
    if not isinstance(value, str):
        raise InputError(
            f"prompt must be a string, got {type(value).__name__} {_short_repr(value)}",
            file=spec.source,
            line=line,
            field=field,
        )
    if not value.strip():
        raise InputError(
            f"prompt is empty or whitespace-only: {value!r}",
            file=spec.source,
            line=line,
            field=field,
        )
    _require_utf8(value, "prompt", spec, line, field)
    return value


def _record_id(record: Mapping[str, Any], spec: Spec, line: int, default_id: str) -> str:
    """Return the record's id as a string, or ``default_id`` when it has no id field."""
    field = spec.id_field
    if field is None or field not in record:
        return default_id
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"id must be a string or an integer, got {type(value).__name__} {_short_repr(value)}",
            file=spec.source,
            line=line,
            field=field,
        )
    text = str(value)
    if not text.strip():
        raise InputError(f"id is empty: {value!r}", file=spec.source, line=line, field=field)
    _require_utf8(text, "id", spec, line, field)
    return text


def _require_utf8(text: str, what: str, spec: Spec, line: int, field: str) -> None:
    """Reject a lone surrogate (a JSON ``\\ud800`` escape): the output file could not hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{what} holds a lone surrogate {text[exc.start]!r} at character {exc.start + 1}, "
            "which cannot be written as UTF-8; fix the \\u escape",
            file=spec.source,
            line=line,
            field=field,
        ) from None


def _short_repr(value: Any, most: int = 200) -> str:
    """``repr(value)``, cut to ``most`` characters (a whole JSON array would flood the message)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= most else text[: most - 3] + "..."
