"""CSV with a header row; a row's line is the csv reader's ``line_num``, its default id its data
row number (:func:`~aidsafe.inputs.default_id`)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import PROMPT_FIELD_HINT, Result, Spec, checked_item, decoded_lines, default_id


def read_csv(path: Path, spec: Spec) -> Iterator[Result]:
    """CSV with a header row; each row's line is the csv reader's ``line_num`` (its last line),
    its default id its 1-based data row number, however many lines its quoted fields span."""
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


class _CsvFeed:
    """Feeds decoded lines to the csv reader, tracking the physical line number.

    Strict: an undecodable line raises as soon as it is read (before any row spanning
    it). Lenient: its stand-in text is fed instead and its problem kept until the row
    spanning it comes out, so that row is skipped and the problem reported.
    """

    def __init__(self, path: Path, spec: Spec) -> None:
        self.path = path
        self.spec = spec
        self.number = 0
        self.pending: list[InputError] = []

    def lines(self) -> Iterator[str]:
        """The file's decoded lines, line endings kept, as the csv reader wants them."""
        for number, text, problem in decoded_lines(self.path, self.spec.source):
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


def _csv_rows(reader: csv.DictReader[str], feed: _CsvFeed, spec: Spec) -> Iterator[Result]:
    """The data rows; a row on a bad line or rejected by the parser is a problem (strict: raises).

    Every row counts towards the row numbers (the default ids), a bad one too."""
    error_line = 0
    rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows += 1
            problem = _csv_error(exc, spec, feed.number)
            # a field over the size limit leaves the parser mid-field: what follows is not rows
            bad_lines = feed.take()
            if not spec.lenient or "field limit" in str(exc) or feed.number <= error_line:
                yield from bad_lines  # lenient: skipped, reported before the file-level error
                raise problem from None
            error_line = feed.number
            yield from bad_lines or [problem]
            continue
        rows += 1
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
        yield checked_item(record, spec, line, default_id(rows))
    yield from feed.take()


def _csv_error(exc: csv.Error, spec: Spec, line: int) -> InputError:
    """The :class:`InputError` of a row (or header) the csv parser rejected."""
    return InputError(f"malformed CSV: {exc}", file=spec.source, line=line)


def _csv_after_blank_header(rows: Iterator[list[str]], feed: _CsvFeed, spec: Spec) -> Iterator[InputError]:
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


def _check_csv_header(columns: Sequence[str], spec: Spec) -> None:
    """Require the prompt column in the CSV header (line 1)."""
    if spec.prompt_field not in columns:
        found = ", ".join(repr(name) for name in columns)
        raise InputError(
            f"CSV header has no prompt column {spec.prompt_field!r}; columns found: [{found}]; "
            f"{PROMPT_FIELD_HINT}",
            file=spec.source,
            line=1,
            field=spec.prompt_field,
        )


def _csv_record(row: dict[str | Any, Any], spec: Spec, line: int) -> dict[str, Any]:
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
