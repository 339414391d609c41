"""Read files of user prompts: JSON Lines, CSV, plain text, or a saved Hugging Face dataset.

Every reader streams its input: records are decoded, validated and yielded one at a
time, so only the set of ids already seen (to reject duplicates) grows with the file.
Problems are reported as :class:`~aidsafe.errors.InputError` naming the file, the
line (or dataset row) and the field at fault, so the user can fix the file at once.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from aidsafe.errors import InputError

__all__ = ["PromptItem", "read_prompts", "count_prompts"]

_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
_CSV_SUFFIXES = frozenset({".csv"})
_BOM = "\ufeff"
_PROMPT_FIELD_HINT = "use --prompt-field to name the field that holds the prompt"


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


@dataclass(frozen=True, slots=True)
class _Spec:
    """What to pull out of each record, and where the records come from."""

    source: str
    prompt_field: str
    id_field: str | None
    unit: str = "line"


def read_prompts(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    id_field: str = "id",
    limit: int | None = None,
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

    Returns:
        An iterator of :class:`PromptItem`, in file order.

    Raises:
        InputError: The path is missing, or (while iterating) the file is malformed.
        ValueError: ``limit`` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    source = os.fspath(path)
    if not os.path.exists(source):
        raise InputError("file not found; check the path", file=source)
    return _read_checked(Path(source), source, prompt_field, id_field, limit)


def count_prompts(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    id_field: str = "id",
    limit: int | None = None,
) -> int:
    """Validate the whole file and count its prompts (one full pass through read_prompts).

    Used for progress bars and to refuse a bad file before spending any model call.

    Raises:
        InputError: The file is missing or malformed.
    """
    items = read_prompts(path, prompt_field=prompt_field, id_field=id_field, limit=limit)
    return sum(1 for _ in items)


def _read_checked(
    path: Path, source: str, prompt_field: str, id_field: str, limit: int | None
) -> Iterator[PromptItem]:
    """Yield deduplicated prompts up to ``limit``; raise if the file holds none at all."""
    if limit == 0:
        return
    items = _dedup(_read_any(path, source, prompt_field, id_field), id_field)
    count = 0
    for item in islice(items, limit):
        count += 1
        yield item
    if count == 0:
        raise InputError("no prompts found; the file is empty or has only blank lines", file=source)


def _read_any(path: Path, source: str, prompt_field: str, id_field: str) -> Iterator[PromptItem]:
    """Dispatch on the path to the reader of its format."""
    if path.is_dir():
        return _read_dataset(path, _Spec(source, prompt_field, id_field, unit="row"))
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path, _Spec(source, prompt_field, id_field))
    if suffix in _CSV_SUFFIXES:
        return _read_csv(path, _Spec(source, prompt_field, id_field))
    return _read_text(path, _Spec(source, prompt_field, None))


def _dedup(items: Iterable[PromptItem], id_field: str) -> Iterator[PromptItem]:
    """Pass items through, raising on the second occurrence of an id."""
    first_line: dict[str, int] = {}
    for item in items:
        seen = first_line.setdefault(item.id, item.line)
        if seen != item.line:
            raise InputError(
                f"duplicate id {item.id!r} (first seen at line {seen}); ids must be unique",
                file=item.source,
                line=item.line,
                field=id_field,
            )
        yield item


# --- decoding -----------------------------------------------------------------------


def _decoded_lines(path: Path, source: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each physical line, line endings kept.

    The file is read in binary and decoded line by line so that invalid UTF-8 and
    NUL bytes are reported with the line they are on. A leading BOM is dropped.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = _decode_line(raw, source, number)
            yield number, (text.removeprefix(_BOM) if number == 1 else text)


def _decode_line(raw: bytes, source: str, number: int) -> str:
    """Decode one line as UTF-8, rejecting NUL bytes as binary data."""
    if b"\x00" in raw:
        raise InputError(
            "binary data (NUL byte) found; this does not look like a text file of prompts",
            file=source,
            line=number,
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"invalid UTF-8 (byte {raw[exc.start:exc.start + 1]!r} at column {exc.start + 1}); "
            "re-save the file as UTF-8",
            file=source,
            line=number,
        ) from None


def _strip_eol(text: str) -> str:
    """Remove one trailing line ending (``\\n``, ``\\r\\n`` or ``\\r``) and nothing else."""
    if text.endswith("\n"):
        text = text[:-1]
    return text.removesuffix("\r")


# --- record validation --------------------------------------------------------------


def _make_item(record: Mapping[str, Any], spec: _Spec, line: int, default_id: str) -> PromptItem:
    """Validate one record's prompt and id and build its :class:`PromptItem`."""
    return PromptItem(
        id=_record_id(record, spec, line, default_id),
        prompt=_record_prompt(record, spec, line),
        source=spec.source,
        line=line,
    )


def _record_prompt(record: Mapping[str, Any], spec: _Spec, line: int) -> str:
    """Return the record's prompt, raising if it is missing, not a string, or blank."""
    field = spec.prompt_field
    if field not in record:
        fields = ", ".join(repr(name) for name in sorted(record))
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
            f"prompt must be a string, got {type(value).__name__} {value!r}",
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
    return value


def _record_id(record: Mapping[str, Any], spec: _Spec, line: int, default_id: str) -> str:
    """Return the record's id as a string, or ``default_id`` when it has no id field."""
    field = spec.id_field
    if field is None or field not in record:
        return default_id
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"id must be a string or an integer, got {type(value).__name__} {value!r}",
            file=spec.source,
            line=line,
            field=field,
        )
    text = str(value)
    if not text.strip():
        raise InputError(f"id is empty: {value!r}", file=spec.source, line=line, field=field)
    return text


# --- format readers -----------------------------------------------------------------


def _read_text(path: Path, spec: _Spec) -> Iterator[PromptItem]:
    """Plain text: one prompt per line, blank lines skipped, id is the line number."""
    for number, text in _decoded_lines(path, spec.source):
        prompt = _strip_eol(text)
        if prompt.strip():
            yield _make_item({spec.prompt_field: prompt}, spec, number, str(number))


def _read_jsonl(path: Path, spec: _Spec) -> Iterator[PromptItem]:
    """JSON Lines: one JSON object per line, blank lines skipped."""
    for number, text in _decoded_lines(path, spec.source):
        if text.strip():
            record = _parse_json_object(text, spec.source, number)
            yield _make_item(record, spec, number, str(number))


def _parse_json_object(text: str, source: str, number: int) -> dict[str, Any]:
    """Parse one JSON Lines line, which must hold a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"invalid JSON: {exc.msg} (column {exc.colno}); each line must be one JSON object",
            file=source,
            line=number,
        ) from None
    if not isinstance(value, dict):
        raise InputError(
            f"expected a JSON object, got {type(value).__name__}: {text.strip()[:80]!r}",
            file=source,
            line=number,
        )
    return value


def _read_csv(path: Path, spec: _Spec) -> Iterator[PromptItem]:
    """CSV with a header row; each row's line is the csv reader's ``line_num``."""
    lines = (text for _, text in _decoded_lines(path, spec.source))
    reader = csv.DictReader(lines)
    try:
        columns = reader.fieldnames
        if columns is None or not any(name.strip() for name in columns):
            _check_csv_all_blank(reader.reader, spec)
            return
        _check_csv_header(columns, spec)
        for row in reader:
            line = reader.line_num
            yield _make_item(_csv_record(row, spec, line), spec, line, str(line))
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}", file=spec.source, line=reader.line_num) from None


def _check_csv_all_blank(rows: Iterator[list[str]], spec: _Spec) -> None:
    """After a blank first line, require the rest to be blank too (an empty file)."""
    if any(any(cell.strip() for cell in row) for row in rows):
        raise InputError(
            "CSV header is blank; the first line must name the columns (e.g. 'id,prompt')",
            file=spec.source,
            line=1,
        )


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


def _read_dataset(path: Path, spec: _Spec) -> Iterator[PromptItem]:
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
        yield _make_item(row, spec, index + 1, str(index))


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
