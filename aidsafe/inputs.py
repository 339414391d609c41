"""Read files of user prompts: JSON Lines, CSV, plain text, or a saved Hugging Face dataset.

Every reader streams its input: records are decoded, validated and yielded one at a
time, so only the set of ids already seen (to reject duplicates) grows with the file.
Problems are reported as :class:`~aidsafe.errors.InputError` naming the file, the
line (or dataset row) and the field at fault, so the user can fix the file at once.

Two modes:

- **strict** (the default): the first bad line raises, so a bad file is refused before
  any model call is spent on it (see :func:`count_prompts`).
- **lenient** (``lenient=True``): a bad *line* is skipped, its :class:`InputError` is
  appended to the caller's ``problems`` list, and the valid prompts still come out.
  Line-level problems are: invalid JSON, or a JSON value that is not an object; a
  missing prompt field; a prompt that is not a string, is empty or whitespace-only, or
  cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"``); a bad id; a
  duplicate id (the later record is skipped); undecodable bytes or a NUL byte on a
  line; a CSV row shorter than the header, or one the CSV parser rejects.
  *File-level* problems still raise in lenient mode: a missing file, a file without a
  single valid prompt, a CSV header that is blank, undecodable or lacks the prompt
  column, a CSV field over the csv module's size limit, and a dataset directory that
  cannot be loaded or lacks the prompt column.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeAlias

from aidsafe.errors import InputError

__all__ = ["PromptItem", "read_prompts", "count_prompts", "format_problems", "report_problems"]

_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
_CSV_SUFFIXES = frozenset({".csv"})
_BOM = "\ufeff"
_PROMPT_FIELD_HINT = "use --prompt-field to name the field that holds the prompt"
_MAX_REPORTED = 20


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One user prompt read from an input file.

    Attributes:
        id: The record id (the id field's value, or a default derived from the position).
        prompt: The user prompt, verbatim; it is never rendered as a template.
        source: The input file path as given by the caller.
        line: 1-based line number (JSONL, text, CSV via the csv reader's ``line_num``),
            or the 0-based row index + 1 for a Hugging Face dataset.
    """

    id: str
    prompt: str
    source: str
    line: int


_Result: TypeAlias = "PromptItem | InputError"
"""What a format reader yields per record: a valid item, or the line-level problem."""


@dataclass(frozen=True, slots=True)
class _Spec:
    """What to pull out of each record, and where the records come from."""

    source: str
    prompt_field: str
    id_field: str | None
    unit: str = "line"
    lenient: bool = False


def read_prompts(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    id_field: str = "id",
    limit: int | None = None,
    lenient: bool = False,
    problems: list[InputError] | None = None,
) -> Iterator[PromptItem]:
    """Stream prompts from a file; never holds the whole file in memory (except dedup set of ids).

    The format follows the path: a directory is a Hugging Face dataset saved with
    ``Dataset.save_to_disk``; ``.jsonl``/``.ndjson``/``.json`` is JSON Lines; ``.csv`` is
    CSV with a header row; anything else is plain text with one prompt per line.

    Args:
        path: The input file (or dataset directory).
        prompt_field: The field (JSON key, CSV column, dataset column) holding the prompt.
        id_field: The field holding the record id; when absent a positional id is used.
        limit: Stop after this many prompts; only what was read is validated.
        lenient: Skip bad lines instead of raising on the first one (see the module
            docstring for which problems are per line and which still raise).
            ``limit`` counts valid prompts only.
        problems: In lenient mode, each skipped line's :class:`InputError` is appended
            here, in file order, as iteration reaches it (``None``: skip silently).
            Unused in strict mode.

    Returns:
        An iterator of :class:`PromptItem`, in file order.

    Raises:
        InputError: The path is missing, or (while iterating) the file is malformed; in
            lenient mode only for file-level problems, including a file that holds no
            valid prompt at all.
        ValueError: ``limit`` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    source = os.fspath(path)
    if not os.path.exists(source):
        raise InputError("file not found; check the path", file=source)
    return _read_checked(Path(source), source, prompt_field, id_field, limit, lenient, problems)


def count_prompts(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    id_field: str = "id",
    limit: int | None = None,
    lenient: bool = False,
    problems: list[InputError] | None = None,
) -> int:
    """Validate the whole file and count its prompts (one full pass through read_prompts).

    Used for progress bars and to refuse a bad file before spending any model call. In
    lenient mode the count is of valid prompts, and the skipped lines' errors are
    appended to ``problems`` (as :func:`read_prompts` does).

    Raises:
        InputError: The file is missing or malformed (lenient: only file-level problems).
    """
    items = read_prompts(
        path, prompt_field=prompt_field, id_field=id_field, limit=limit, lenient=lenient, problems=problems
    )
    return sum(1 for _ in items)


def format_problems(problems: Sequence[InputError], *, most: int = _MAX_REPORTED) -> str:
    """One ``file:line: field: message`` line per problem, at most ``most``, then ``... and N more``."""
    lines = [str(problem) for problem in problems[:most]]
    if len(problems) > most:
        lines.append(f"... and {len(problems) - most} more")
    return "\n".join(lines)


def report_problems(
    problems: Sequence[InputError], *, stream: TextIO | None = None, most: int = _MAX_REPORTED
) -> None:
    """Print the skipped lines of a lenient read to ``stream`` (default: stderr); nothing if none."""
    if not problems:
        return
    noun = "line" if len(problems) == 1 else "lines"
    text = f"skipped {len(problems)} bad input {noun}:\n{format_problems(problems, most=most)}"
    print(text, file=stream if stream is not None else sys.stderr)


def _read_checked(
    path: Path,
    source: str,
    prompt_field: str,
    id_field: str,
    limit: int | None,
    lenient: bool,
    problems: list[InputError] | None,
) -> Iterator[PromptItem]:
    """Yield deduplicated prompts up to ``limit``; raise if the file holds none at all.

    Strict: the first line-level problem raises. Lenient: it is collected and skipped.
    """
    if limit == 0:
        return
    results = _dedup(_read_any(path, source, prompt_field, id_field, lenient), id_field)
    count = skipped = 0
    first: InputError | None = None
    for result in results:
        if isinstance(result, InputError):
            if not lenient:
                raise result
            skipped += 1
            first = first or result
            if problems is not None:
                problems.append(result)
            continue
        count += 1
        yield result
        if limit is not None and count >= limit:
            return
    if count == 0 and first is not None:
        raise InputError(
            f"no valid prompts: all {skipped} non-blank lines/rows were bad and skipped; the first: {first}",
            file=source,
        )
    if count == 0:
        raise InputError("no prompts found; the file is empty or has only blank lines", file=source)


def _read_any(path: Path, source: str, prompt_field: str, id_field: str, lenient: bool) -> Iterator[_Result]:
    """Dispatch on the path to the reader of its format."""
    if path.is_dir():
        return _read_dataset(path, _Spec(source, prompt_field, id_field, unit="row", lenient=lenient))
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path, _Spec(source, prompt_field, id_field, lenient=lenient))
    if suffix in _CSV_SUFFIXES:
        return _read_csv(path, _Spec(source, prompt_field, id_field, lenient=lenient))
    return _read_text(path, _Spec(source, prompt_field, None, lenient=lenient))


def _dedup(results: Iterable[_Result], id_field: str) -> Iterator[_Result]:
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


# --- decoding -----------------------------------------------------------------------


def _decoded_lines(path: Path, source: str) -> Iterator[tuple[int, str, InputError | None]]:
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


def _strip_eol(text: str) -> str:
    """Remove one trailing line ending (``\\n``, ``\\r\\n`` or ``\\r``) and nothing else."""
    if text.endswith("\n"):
        text = text[:-1]
    return text.removesuffix("\r")


# --- record validation --------------------------------------------------------------


def _checked_item(record: Mapping[str, Any], spec: _Spec, line: int, default_id: str) -> _Result:
    """:func:`_make_item`, with its line-level error returned instead of raised."""
    try:
        return _make_item(record, spec, line, default_id)
    except InputError as exc:
        return exc


def _make_item(record: Mapping[str, Any], spec: _Spec, line: int, default_id: str) -> PromptItem:
    """Validate one record's prompt and id and build its :class:`PromptItem`."""
    return PromptItem(
        id=_record_id(record, spec, line, default_id),
        prompt=_record_prompt(record, spec, line),
        source=spec.source,
        line=line,
    )


def _record_prompt(record: Mapping[str, Any], spec: _Spec, line: int) -> str:
    """Return the record's prompt, raising if it is missing, not a string, blank or not UTF-8."""
    field = spec.prompt_field
    if field not in record:
        fields = ", ".join(repr(name) for name in sorted(record, key=str))
        raise InputError(
            f"missing prompt field {field!r}; this {spec.unit} has fields [{fields}]; "
            f"{_PROMPT_FIELD_HINT}",
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


def _record_id(record: Mapping[str, Any], spec: _Spec, line: int, default_id: str) -> str:
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


def _require_utf8(text: str, what: str, spec: _Spec, line: int, field: str) -> None:
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


# --- format readers -----------------------------------------------------------------


def _read_text(path: Path, spec: _Spec) -> Iterator[_Result]:
    """Plain text: one prompt per line, blank lines skipped, id is the line number."""
    for number, text, problem in _decoded_lines(path, spec.source):
        if problem is not None:
            yield problem
            continue
        prompt = _strip_eol(text)
        if prompt.strip():
            yield _checked_item({spec.prompt_field: prompt}, spec, number, str(number))


def _read_jsonl(path: Path, spec: _Spec) -> Iterator[_Result]:
    """JSON Lines: one JSON object per line, blank lines skipped."""
    for number, text, problem in _decoded_lines(path, spec.source):
        if problem is not None:
            yield problem
        elif text.strip():
            record = _parse_json_object(text, spec.source, number)
            if isinstance(record, InputError):
                yield record
            else:
                yield _checked_item(record, spec, number, str(number))


def _parse_json_object(text: str, source: str, number: int) -> dict[str, Any] | InputError:
    """Parse one JSON Lines line, which must hold a JSON object; return the problem if not."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputError(
            f"invalid JSON: {exc.msg} (column {exc.colno}); each line must be one JSON object",
            file=source,
            line=number,
        )
    except (ValueError, RecursionError) as exc:  # a huge integer literal; nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        return InputError(
            f"invalid JSON: {reason}; each line must be one JSON object",
            file=source,
            line=number,
        )
    if not isinstance(value, dict):
        return InputError(
            f"expected a JSON object, got {type(value).__name__}: {text.strip()[:80]!r}",
            file=source,
            line=number,
        )
    return value


class _CsvFeed:
    """Feeds decoded lines to the csv reader, tracking the physical line number.

    Strict: an undecodable line raises as soon as it is read (before any row spanning
    it). Lenient: its stand-in text is fed instead and its problem kept until the row
    spanning it comes out, so that row is skipped and the problem reported.
    """

    def __init__(self, path: Path, spec: _Spec) -> None:
        self.path = path
        self.spec = spec
        self.number = 0
        self.pending: list[InputError] = []

    def lines(self) -> Iterator[str]:
        for number, text, problem in _decoded_lines(self.path, self.spec.source):
            self.number = number
            if problem is not None:
                if not self.spec.lenient:
                    raise problem
                self.pending.append(problem)
            yield text

    def take(self) -> list[InputError]:
        """The bad lines read since the last call (those of the row just parsed)."""
        pending, self.pending = self.pending, []
        return pending


def _read_csv(path: Path, spec: _Spec) -> Iterator[_Result]:
    """CSV with a header row; each row's line is the csv reader's ``line_num``."""
    feed = _CsvFeed(path, spec)
    reader = csv.DictReader(feed.lines())
    try:
        columns = reader.fieldnames
        header_problems = feed.take()
        if header_problems:
            raise header_problems[0]
        if columns is None or not any(name.strip() for name in columns):
            yield from _csv_after_blank_header(reader.reader, feed, spec)
            return
    except csv.Error as exc:  # a bad line read on the way is the real problem (strict raises it first)
        raise (feed.take() or [_csv_error(exc, spec, feed.number)])[0] from None
    _check_csv_header(columns, spec)
    yield from _csv_rows(reader, feed, spec)


def _csv_rows(reader: csv.DictReader[str], feed: _CsvFeed, spec: _Spec) -> Iterator[_Result]:
    """The data rows; a row on a bad line or rejected by the parser is a problem (strict: raises)."""
    error_line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problem = _csv_error(exc, spec, feed.number)
            # a field over the size limit leaves the parser mid-field: what follows is not rows
            bad_lines = feed.take()
            if not spec.lenient or "field limit" in str(exc) or feed.number <= error_line:
                yield from bad_lines  # lenient: skipped, reported before the file-level error
                raise problem from None
            error_line = feed.number
            yield from bad_lines or [problem]
            continue
        line = feed.number
        bad_lines = feed.take()
        if bad_lines:
            yield from bad_lines
            continue
        try:
            record = _csv_record(row, spec, line)
        except InputError as exc:
            yield exc
            continue
        yield _checked_item(record, spec, line, str(line))
    yield from feed.take()


def _csv_error(exc: csv.Error, spec: _Spec, line: int) -> InputError:
    return InputError(f"malformed CSV: {exc}", file=spec.source, line=line)


def _csv_after_blank_header(rows: Iterator[list[str]], feed: _CsvFeed, spec: _Spec) -> Iterator[InputError]:
    """After a blank first line, require the rest to be blank too (an empty file).

    Lenient: bad lines (undecodable, NUL) are skipped and reported, not taken for content.
    """
    for row in rows:
        bad_lines = feed.take()
        if bad_lines:
            yield from bad_lines
        elif any(cell.strip() for cell in row):
            raise InputError(
                "CSV header is blank; the first line must name the columns (e.g. 'id,prompt')",
                file=spec.source,
                line=1,
            )
    yield from feed.take()


def _check_csv_header(columns: list[str], spec: _Spec) -> None:
    """Require the prompt column in the CSV header (line 1)."""
    if spec.prompt_field not in columns:
        found = ", ".join(repr(name) for name in columns)
        raise InputError(
            f"CSV header has no prompt column {spec.prompt_field!r}; columns found: [{found}]; "
            f"{_PROMPT_FIELD_HINT}",
            file=spec.source,
            line=1,
            field=spec.prompt_field,
        )


def _csv_record(row: dict[str | Any, Any], spec: _Spec, line: int) -> dict[str, Any]:
    """Return the row, raising if it is too short to reach the prompt or id column."""
    for field in (spec.prompt_field, spec.id_field):
        if field is not None and field in row and row[field] is None:
            raise InputError(
                "row has fewer fields than the header, so this column is missing",
                file=spec.source,
                line=line,
                field=field,
            )
    return row


def _read_dataset(path: Path, spec: _Spec) -> Iterator[_Result]:
    """A Hugging Face dataset directory; row ``i`` has line ``i + 1`` and default id ``"i"``."""
    dataset = _load_dataset(path, spec.source)
    columns = list(dataset.column_names)
    if spec.prompt_field not in columns:
        found = ", ".join(repr(name) for name in columns)
        raise InputError(
            f"dataset has no prompt column {spec.prompt_field!r}; columns: [{found}]; "
            f"{_PROMPT_FIELD_HINT}",
            file=spec.source,
            field=spec.prompt_field,
        )
    wanted = [name for name in (spec.prompt_field, spec.id_field) if name in columns]
    if hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns(wanted)
    for index, row in enumerate(dataset):
        yield _checked_item(row, spec, index + 1, str(index))


def _load_dataset(path: Path, source: str) -> Any:
    """Load a dataset saved with ``save_to_disk``; a DatasetDict must have exactly one split."""
    try:
        import datasets
    except ImportError:
        raise InputError(
            "reading a dataset directory needs the 'datasets' package: pip install datasets",
            file=source,
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(
            f"not a Hugging Face dataset saved with save_to_disk: {exc}", file=source
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return _single_split(loaded, source)
    return loaded


def _single_split(splits: Mapping[str, Any], source: str) -> Any:
    """Return the only split of a DatasetDict, or raise naming the splits found."""
    names = sorted(splits)
    if len(names) != 1:
        raise InputError(
            f"dataset has {len(names)} splits {names!r}; expected exactly one - "
            "save a single split (e.g. dataset_dict['train'].save_to_disk(...))",
            file=source,
        )
    return splits[names[0]]
