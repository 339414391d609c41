"""Scan an output before resuming it, and repair what a crash left behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import InputError
from ..pairing import prompt_key
from ..records import Record, WrittenBy
from ._atomic import rewrite
from ._lines import Line, LineModel, PathLike, Problem, bad_line, lines, parse_line

__all__ = ["OutputState", "drop_records", "scan_output", "stamp_of"]

_SCAN_HINT = "; the file is damaged or not an aidsafe output - fix or move it, or start over with --overwrite"


@dataclass
class OutputState:
    """What an existing output file holds (see :func:`scan_output`)."""

    done: set[str] = field(default_factory=set)
    """Ids of records with status ``ok`` (every record of a kind without a status, e.g. a pairwise verdict)."""
    failed: set[str] = field(default_factory=set)
    """Ids of records with status ``failed``."""
    lines: int = 0
    """Valid record lines kept in the file."""
    repaired: bool = False
    """True if a corrupt/truncated last line was cut off (or its missing newline added)."""
    duplicates: int = 0
    """Duplicate ids found (the later lines are removed when ``repair=True``)."""
    prompts: dict[str, str] = field(default_factory=dict)
    """With ``scan_output(prompts=True)``: each record's :func:`~aidsafe.pairing.prompt_key`, by id
    (records without a prompt, e.g. pairwise verdicts, have none), to check a resumed input."""
    config: str | None = None
    """The configuration digest its records carry (``written_by.config``, one for all: a record with
    another is refused); None when no record carries one (a file written before records did)."""
    config_line: int | None = None
    """The line of the first record that carries it."""
    format: int = 0
    """The highest ``written_by.format`` of its records (0: none carries one)."""


@dataclass
class _Scan:
    """Working state of one :func:`scan_output` pass."""

    model: LineModel[Any]
    what: str
    prompts: bool = False
    state: OutputState = field(default_factory=OutputState)
    duplicate_lines: set[int] = field(default_factory=set)
    torn: tuple[Line, Problem] | None = None
    """A line cut short (starts with ``{``, not JSON), tolerated only if no record follows it."""
    last: Line | None = None
    """The last valid record line."""


def _status(record: BaseModel) -> str:
    return str(getattr(record, "status", "ok"))


def stamp_of(record: object) -> WrittenBy | None:
    """A record's ``written_by`` (None for a record without one: older, or of a kind without it)."""
    stamp = getattr(record, "written_by", None)
    return stamp if isinstance(stamp, WrittenBy) else None


def mixed_configs(path: PathLike, line: int, config: str, first: tuple[PathLike, int], first_config: str) -> InputError:
    """The error for a record written with another configuration than an earlier one of the same output."""
    return InputError(
        f"written with configuration sha256 {config}, but {first[0]}:{first[1]} with {first_config}: "
        "one output holds the records of one configuration (resuming or merging would mix them); "
        "move the odd records out, or start over with --overwrite",
        file=path,
        line=line,
    )


def scan_output(
    path: PathLike, *, repair: bool = True, model: LineModel[Any] = Record, what: str = "an aidsafe record",
    prompts: bool = False, check: Callable[[OutputState], None] | None = None,
) -> OutputState:
    """Read an existing JSONL output and, with ``repair``, fix what a crash left behind.

    Every line must validate as ``model`` (any record with an ``id``; one with ``status ==
    "failed"`` counts as failed).

    * A missing file gives an empty state.
    * A last (non-blank) line that starts like a record (``{``) but is not valid JSON - with or
      without its newline - is what a killed writer leaves: with ``repair`` the file is
      truncated to the end of the last valid line (``os.truncate`` + fsync). A valid last
      record missing only its newline gets one.
    * Any other bad line - one followed by more records, a JSON line that is not a record, a
      line of text that is no JSON at all (not our file) - is real damage and raises
      :class:`InputError` naming the file and line; nothing is changed and nothing is dropped.
    * An id seen twice keeps its first line; with ``repair`` the file is rewritten
      atomically without the later lines. They are counted in ``duplicates``.
    * Records that carry a configuration digest (``written_by.config``) must all carry the same:
      the first with another raises :class:`InputError` naming its line and the first record's
      (records without one, written before records carried it, go with any).

    With ``repair=False`` the file is never modified; a torn last line is ignored. With
    ``prompts``, ``state.prompts`` keeps each record's prompt key (see :class:`OutputState`).
    ``check`` is called with the state before anything is repaired (a missing file: an empty
    state): what it raises leaves the file untouched.
    """
    path = Path(path)
    if not path.exists():
        empty = OutputState()
        if check is not None:
            check(empty)
        return empty
    scan = _Scan(model=model, what=what, prompts=prompts)
    for line in lines(path):
        _scan_line(path, line, scan)
    if check is not None:
        check(scan.state)
    if repair:
        _repair(path, scan)
    return scan.state


def _scan_line(path: Path, line: Line, scan: _Scan) -> None:
    """Account for one line: record its id, or remember / reject a bad line."""
    if line.blank:
        return
    if scan.torn is not None:  # a bad line that is not the last one
        raise bad_line(path, scan.torn[0], scan.torn[1], scan.what, _SCAN_HINT)
    parsed = parse_line(line, scan.model)
    if isinstance(parsed, Problem):
        if not (parsed.not_json and line.raw.lstrip().startswith(b"{")):
            raise bad_line(path, line, parsed, scan.what, _SCAN_HINT)
        scan.torn = (line, parsed)
        return
    scan.last = line
    state = scan.state
    record_id = str(parsed.id)
    if record_id in state.done or record_id in state.failed:
        state.duplicates += 1
        scan.duplicate_lines.add(line.number)
    else:
        (state.failed if _status(parsed) == "failed" else state.done).add(record_id)
        if scan.prompts and isinstance(getattr(parsed, "prompt", None), str):
            state.prompts[record_id] = prompt_key(parsed)
    stamp = stamp_of(parsed)
    if stamp is not None:
        if state.config is None:
            state.config, state.config_line = stamp.config, line.number
        elif stamp.config != state.config:
            raise mixed_configs(path, line.number, stamp.config, (path, state.config_line or 0), state.config)
        state.format = max(state.format, stamp.format)
    state.lines += 1


def _repair(path: Path, scan: _Scan) -> None:
    """Cut a torn tail, end the file with a newline, and drop duplicate lines."""
    if scan.torn is not None:
        end = scan.last.offset + len(scan.last.raw) if scan.last is not None else 0
        _truncate(path, end)
        scan.state.repaired = True
    if scan.last is not None and not scan.last.complete:
        _append_newline(path)
        scan.state.repaired = True
    if scan.duplicate_lines:
        rewrite(path, lambda line: line.number not in scan.duplicate_lines)
        scan.state.lines -= len(scan.duplicate_lines)


def _truncate(path: Path, size: int) -> None:
    """Cut the file to ``size`` bytes and make that durable."""
    os.truncate(path, size)
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_newline(path: Path) -> None:
    """Terminate the last line of the file."""
    with path.open("ab") as handle:
        handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def drop_records(path: PathLike, ids: set[str], *, model: LineModel[Any] = Record, what: str = "an aidsafe record") -> int:
    """Rewrite a JSONL output without the records whose id is in ``ids`` (for ``--retry-failed``).

    The rewrite streams and is atomic. A missing file or an empty ``ids`` changes nothing.
    Every line must be a record (run :func:`scan_output` first); a bad one raises
    :class:`InputError`. Returns how many records were dropped.
    """
    path = Path(path)
    if not ids or not path.exists():
        return 0

    def keep(line: Line) -> bool:
        parsed = parse_line(line, model)
        if isinstance(parsed, Problem):
            raise bad_line(path, line, parsed, what)
        return str(parsed.id) not in ids

    return rewrite(path, keep)
