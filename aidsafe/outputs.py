"""Output files of records: crash-safe scanning and repair, atomic rewrites, merging, conversion.

A run appends one JSON line per prompt to a JSONL file. This module keeps that file usable
across crashes and turns it into the other shipped layouts:

* :func:`scan_output` reads an existing output (for resuming): the ids done and failed, and
  it repairs what a crash (``kill -9``) can leave behind - a truncated or corrupt *last*
  line is cut off; a corrupt line anywhere else is real damage and raises
  :class:`~aidsafe.errors.InputError` naming the file and line.
* :func:`drop_records`, :func:`atomic_write_text` and :func:`write_sidecar` rewrite files
  atomically: write ``<path>.tmp`` in the same folder, flush and fsync, ``os.replace``.
* :func:`merge_outputs` concatenates shard outputs, refusing duplicate, missing or
  unexpected ids.
* :func:`convert_output` writes Parquet or a Hugging Face ``save_to_disk`` folder, and
  :func:`records_from_dataset` turns such a dataset back into :class:`~aidsafe.records.Record`.

Every reader streams its file line by line (binary, tracking byte offsets), so memory grows
with the number of ids, not with the size of the file.

Parquet and Hugging Face layout (lossless round trip)
-----------------------------------------------------
Arrow gives every column a single type. A dict keyed by data, such as ``usage``
(stage -> token counts) or ``models`` (role -> model label), would become one struct with the
union of all keys seen, and every row would come back with the keys it never had, filled
with ``None``; a nullable object (``error``) is merged into a struct the same way. Such
rows no longer equal the records that were written. So, explicitly:

* ``usage``, ``models`` and ``error`` - :data:`JSON_FIELDS`, every top-level field whose
  shape varies from row to row: a dict keyed by data, an optional object, a union - are
  stored as **JSON strings** (``error`` is null when there is none). The list is derived
  from :class:`~aidsafe.records.Record`, so a dict field added later is covered too;
* the regular nested fields - ``policy_set``, ``intents``, ``deliberation`` (with each
  turn's fixed ``usage`` counts), ``thoughts``, ``removed_thoughts``, ``faults`` - stay
  Arrow structs and lists, so they remain queryable;
* the table is built with an explicit :func:`record_features` (``datasets.Features``,
  derived from the pydantic models and written into the Parquet schema metadata), so
  empty lists in the first rows never break type inference.

``datasets.Dataset.from_parquet(dest)`` or ``datasets.load_from_disk(dest)`` followed by
:func:`records_from_dataset` gives back exactly the records of the JSONL file.
``datasets`` and ``pyarrow`` are imported only when a conversion is asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .errors import AidsafeError, InputError
from .records import Record

__all__ = [
    "read_records",
    "OutputState",
    "scan_output",
    "drop_records",
    "atomic_write_text",
    "write_sidecar",
    "sidecar_path",
    "convert_output",
    "merge_outputs",
    "records_from_dataset",
    "record_features",
    "JSON_FIELDS",
    "OUTPUT_FORMATS",
]

OUTPUT_FORMATS = ("jsonl", "parquet", "hf")
"""Layouts :func:`convert_output` can write."""

_BATCH = 1000
_PathLike = str | os.PathLike[str]


@dataclass
class OutputState:
    """What an existing output file holds (see :func:`scan_output`)."""

    done: set[str] = field(default_factory=set)
    """Ids of records with status ``ok``."""
    failed: set[str] = field(default_factory=set)
    """Ids of records with status ``failed``."""
    lines: int = 0
    """Valid record lines kept in the file."""
    repaired: bool = False
    """True if a corrupt/truncated last line was cut off (or its missing newline added)."""
    duplicates: int = 0
    """Duplicate ids found (the later lines are removed when ``repair=True``)."""


# --- reading ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """One physical line of a JSONL output: its number, byte offset and raw bytes."""

    number: int
    offset: int
    raw: bytes

    @property
    def blank(self) -> bool:
        return not self.raw.strip()

    @property
    def complete(self) -> bool:
        return self.raw.endswith(b"\n")


def _lines(path: Path) -> Iterator[_Line]:
    """Yield every physical line of ``path`` with its 1-based number and byte offset."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield _Line(number, offset, raw)
            offset += len(raw)


def _parse(line: _Line, model: type[Record] = Record) -> Record | ValidationError:
    """Validate one line as a record; return the validation error instead of raising it."""
    try:
        return model.model_validate_json(line.raw)
    except ValidationError as exc:
        return exc


def _is_json_error(exc: ValidationError) -> bool:
    """True when the line is not JSON at all (what a torn write leaves), not a schema mismatch."""
    return any(err.get("type") == "json_invalid" for err in exc.errors())


def _first_problem(exc: ValidationError) -> str:
    """A one-line description of a validation error."""
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err.get("loc", ()))
    return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))


def _bad_line(path: Path, line: _Line, exc: ValidationError, hint: str = "") -> InputError:
    """The error for a line that is not an aidsafe record."""
    return InputError(f"not an aidsafe record ({_first_problem(exc)}){hint}", file=path, line=line.number)


_SCAN_HINT = "; the file is damaged or not an aidsafe output - fix or move it, or start over with --overwrite"


def _is_torn(line: _Line, exc: ValidationError) -> bool:
    """True when a line looks like a record cut short by a crash: it starts like one, but is not JSON."""
    return line.raw.lstrip().startswith(b"{") and _is_json_error(exc)


def _iter_records(path: Path) -> Iterator[tuple[_Line, Record]]:
    """Yield every record of a clean output file; any bad line (even the last) raises."""
    for line in _lines(path):
        if line.blank:
            continue
        parsed = _parse(line)
        if isinstance(parsed, ValidationError):
            raise _bad_line(path, line, parsed)
        yield line, parsed


# --- scanning and repair ------------------------------------------------------------


@dataclass
class _Scan:
    """Working state of one :func:`scan_output` pass."""

    state: OutputState = field(default_factory=OutputState)
    duplicate_lines: set[int] = field(default_factory=set)
    torn: _Line | None = None
    """A line cut short (starts with ``{``, not JSON), tolerated only if no record follows it."""
    last: _Line | None = None
    """The last valid record line."""
    model: type[Record] = Record
    """The record class lines must validate as (a judged output uses ``JudgedRecord``)."""


def scan_output(path: _PathLike, *, repair: bool = True, model: type[Record] = Record) -> OutputState:
    """Read an existing JSONL output and, with ``repair``, fix what a crash left behind.

    * A missing file gives an empty state.
    * A last (non-blank) line that starts like a record (``{``) but is not valid JSON - with or
      without its newline - is what a killed writer leaves: with ``repair`` the file is
      truncated to the end of the last valid line (``os.truncate`` + fsync). A valid last
      record missing only its newline gets one.
    * Any other bad line - one followed by more records, a JSON line that is not a record, a
      line of text that is no JSON at all (not our file) - is real damage and raises
      :class:`InputError` naming the file and line; nothing is changed.
    * An id seen twice keeps its first line; with ``repair`` the file is rewritten
      atomically without the later lines. They are counted in ``duplicates``.

    With ``repair=False`` the file is never modified; a torn last line is ignored.
    """
    path = Path(path)
    if not path.exists():
        return OutputState()
    scan = _Scan(model=model)
    for line in _lines(path):
        _scan_line(path, line, scan)
    if repair:
        _repair(path, scan)
    return scan.state


def _scan_line(path: Path, line: _Line, scan: _Scan) -> None:
    """Account for one line: record its id, or remember / reject a bad line."""
    if line.blank:
        return
    if scan.torn is not None:  # a bad line that is not the last one
        raise _bad_line(path, scan.torn, _parse(scan.torn, scan.model), _SCAN_HINT)  # type: ignore[arg-type]
    parsed = _parse(line, scan.model)
    if isinstance(parsed, ValidationError):
        if not _is_torn(line, parsed):
            raise _bad_line(path, line, parsed, _SCAN_HINT)
        scan.torn = line
        return
    scan.last = line
    state = scan.state
    if parsed.id in state.done or parsed.id in state.failed:
        state.duplicates += 1
        scan.duplicate_lines.add(line.number)
    else:
        (state.done if parsed.status == "ok" else state.failed).add(parsed.id)
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
        _rewrite(path, lambda line: line.number not in scan.duplicate_lines)
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


# --- atomic writes ------------------------------------------------------------------


def _temp_path(path: Path) -> Path:
    """``<path>.tmp`` in the same folder, so ``os.replace`` stays on one file system."""
    return path.with_name(path.name + ".tmp")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; not possible on every platform)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _atomic_binary(path: Path) -> Iterator[IO[bytes]]:
    """Open ``<path>.tmp`` for writing; on success fsync it and replace ``path`` with it."""
    temp = _temp_path(path)
    try:
        with temp.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: _PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file, fsync, ``os.replace``."""
    with _atomic_binary(Path(path)) as handle:
        handle.write(text.encode("utf-8"))


def _rewrite(path: Path, keep: Callable[[_Line], bool]) -> int:
    """Rewrite ``path`` atomically with the non-blank lines for which ``keep(line)`` is true.

    Returns how many non-blank lines were left out.
    """
    dropped = 0
    with _atomic_binary(path) as out:
        for line in _lines(path):
            if line.blank:
                continue
            if not keep(line):
                dropped += 1
                continue
            out.write(line.raw if line.complete else line.raw + b"\n")
    return dropped


def drop_records(path: _PathLike, ids: set[str]) -> int:
    """Rewrite a JSONL output without the records whose id is in ``ids`` (for ``--retry-failed``).

    The rewrite streams and is atomic. A missing file or an empty ``ids`` changes nothing.
    Every line must be a record (run :func:`scan_output` first); a bad one raises
    :class:`InputError`. Returns how many records were dropped.
    """
    path = Path(path)
    if not ids or not path.exists():
        return 0

    def keep(line: _Line) -> bool:
        parsed = _parse(line)
        if isinstance(parsed, ValidationError):
            raise _bad_line(path, line, parsed)
        return parsed.id not in ids

    return _rewrite(path, keep)


def sidecar_path(output: _PathLike) -> Path:
    """The run summary next to an output: ``out.jsonl`` -> ``out.jsonl.summary.json``."""
    return Path(os.fspath(output) + ".summary.json")


def write_sidecar(output: _PathLike, summary: dict[str, Any]) -> Path:
    """Write ``summary`` as indented JSON to :func:`sidecar_path` atomically; return that path."""
    target = sidecar_path(output)
    atomic_write_text(target, json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return target


# --- merging ------------------------------------------------------------------------


def merge_outputs(
    paths: list[_PathLike],
    dest: _PathLike,
    *,
    expected_ids: Iterable[str] | None = None,
) -> dict[str, int]:
    """Concatenate shard outputs into ``dest`` (atomically), checking the ids.

    Each shard is first validated with ``scan_output(repair=False)`` (shards are never
    modified). Raises :class:`InputError` for an id found twice (naming the id and both
    files), a shard whose last line is torn, and - when ``expected_ids`` (the input's ids)
    is given - for ids missing from the shards (up to 10 listed, with the count) or not
    in the input. Returns ``{"records", "ok", "failed", "shards"}``.
    """
    shards = [Path(p) for p in paths]
    if not shards:
        raise InputError("no shard files given to merge")
    dest = Path(dest)
    given: dict[Path, Path] = {}
    for shard in shards:
        _check_shard(shard, dest)
        first = given.setdefault(shard.resolve(), shard)
        if first is not shard:
            raise InputError(f"shard given twice (also as {first})", file=shard)
    seen: dict[str, tuple[Path, int]] = {}
    counts = {"records": 0, "ok": 0, "failed": 0, "shards": len(shards)}
    with _atomic_binary(dest) as out:
        for shard in shards:
            _copy_shard(shard, out, seen, counts)
        if expected_ids is not None:
            _check_expected(seen, expected_ids, shards)
    return counts


def _check_shard(shard: Path, dest: Path) -> None:
    """A shard must exist, differ from the destination, and hold no damaged line."""
    if not shard.is_file():
        raise InputError("shard file not found; check the path", file=shard)
    if dest.exists() and shard.resolve() == dest.resolve():
        raise InputError("the merged output must not be one of the shards", file=shard)
    scan_output(shard, repair=False)


def _copy_shard(shard: Path, out: IO[bytes], seen: dict[str, tuple[Path, int]], counts: dict[str, int]) -> None:
    """Append one shard's records to ``out``, refusing ids already seen and a torn tail."""
    for line in _lines(shard):
        if line.blank:
            continue
        parsed = _parse(line)
        if isinstance(parsed, ValidationError):
            raise InputError(
                "last line is truncated (interrupted run?); resume this shard with "
                "'aidsafe generate' (which repairs it) before merging",
                file=shard,
                line=line.number,
            )
        first = seen.get(parsed.id)
        if first is not None:
            raise InputError(
                f"duplicate id {parsed.id!r}: also in {first[0]}:{first[1]}",
                file=shard,
                line=line.number,
            )
        seen[parsed.id] = (shard, line.number)
        out.write(line.raw if line.complete else line.raw + b"\n")
        counts["records"] += 1
        counts[parsed.status] += 1


def _check_expected(seen: dict[str, tuple[Path, int]], expected_ids: Iterable[str], shards: list[Path]) -> None:
    """Every expected id must be in the shards, and every shard id must be expected."""
    expected: set[str] = set()
    missing: list[str] = []
    for item in expected_ids:
        expected.add(item)
        if item not in seen:
            missing.append(item)
    if missing:
        listed = ", ".join(repr(i) for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputError(
            f"{len(missing)} input id(s) missing from the {len(shards)} shard(s): {listed}{more}; "
            "run the missing prompts before merging"
        )
    unexpected = [i for i in seen if i not in expected]
    if unexpected:
        first = unexpected[0]
        where, line = seen[first]
        raise InputError(
            f"{len(unexpected)} record id(s) not in the input, e.g. {first!r}; wrong input file or shard?",
            file=where,
            line=line,
        )


# --- Parquet / Hugging Face ---------------------------------------------------------


def _import_datasets() -> Any:
    """Import ``datasets`` (and with it ``pyarrow``), or explain how to install it."""
    try:
        import datasets
    except ImportError:
        raise AidsafeError("writing parquet or hf output needs the 'datasets' package: pip install datasets") from None
    return datasets


def _shape(annotation: Any) -> Any:
    """The fixed Arrow shape of a field type, or None when its shape varies from row to row.

    A shape is a dtype name (``"string"``, ``"int64"``, ``"bool"``, ``"float64"``), a one-item
    list (a list of that shape) or a dict (a struct). Dicts keyed by data, optional values,
    unions and anything else have no fixed shape.
    """
    scalars = {str: "string", bool: "bool", int: "int64", float: "float64"}
    if annotation in scalars:
        return scalars[annotation]
    origin = get_origin(annotation)
    if origin is Literal:
        kinds = {type(value) for value in get_args(annotation)}
        return scalars.get(kinds.pop()) if len(kinds) == 1 else None
    if origin is list:
        inner = _shape(get_args(annotation)[0])
        return None if inner is None else [inner]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = {name: _shape(info.annotation) for name, info in annotation.model_fields.items()}
        return None if any(value is None for value in fields.values()) else fields
    return None


_RECORD_SHAPES = {name: _shape(info.annotation) for name, info in Record.model_fields.items()}

JSON_FIELDS = tuple(name for name, shape in _RECORD_SHAPES.items() if shape is None)
"""Record fields stored as JSON strings in Parquet / HF datasets: those with no fixed shape
(today ``models``, ``usage``, ``error``); derived from :class:`Record`, so a new dict field
is covered too."""


def _feature(shape: Any, datasets: Any) -> Any:
    """Turn a shape from :func:`_shape` into a ``datasets`` feature."""
    if isinstance(shape, str):
        return datasets.Value(shape)
    if isinstance(shape, list):
        return [_feature(shape[0], datasets)]
    return {name: _feature(inner, datasets) for name, inner in shape.items()}


def record_features() -> Any:
    """The explicit ``datasets.Features`` of a record row (see the module docstring for the layout).

    Regular nested fields keep their struct/list types (derived from the pydantic models, so
    they follow the schema); :data:`JSON_FIELDS` are strings.
    """
    datasets = _import_datasets()
    return datasets.Features(
        {name: datasets.Value("string") if shape is None else _feature(shape, datasets) for name, shape in _RECORD_SHAPES.items()}
    )


def _to_row(record: Record) -> dict[str, Any]:
    """A record as a dataset row: :data:`JSON_FIELDS` become JSON strings (``error`` may be null)."""
    row = record.model_dump(mode="json")
    for name in JSON_FIELDS:
        value = row[name]
        row[name] = None if value is None else json.dumps(value, ensure_ascii=False)
    return row


def _from_row(row: dict[str, Any], number: int) -> Record:
    """Decode a dataset row (1-based ``number``) back into its record."""
    data = dict(row)
    try:
        for name in JSON_FIELDS:
            value = data.get(name)
            data[name] = None if value is None else json.loads(value)
        return Record.model_validate(data)
    except (ValueError, TypeError) as exc:
        raise InputError(f"row is not an aidsafe record: {str(exc).splitlines()[0]}", line=number) from None


def records_from_dataset(ds: Iterable[dict[str, Any]]) -> list[Record]:
    """Turn the rows of a dataset written by :func:`convert_output` back into records."""
    return [_from_row(row, number) for number, row in enumerate(ds, start=1)]


def _row_batches(jsonl_path: Path, size: int = _BATCH) -> Iterator[list[dict[str, Any]]]:
    """Stream the output's records as lists of at most ``size`` rows."""
    batch: list[dict[str, Any]] = []
    for _, record in _iter_records(jsonl_path):
        batch.append(_to_row(record))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_parquet(jsonl_path: Path, dest: Path) -> None:
    """Write a Parquet file with the explicit schema, one row group per batch."""
    features = record_features()
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features.arrow_schema
    with _atomic_binary(dest) as handle:
        writer = pq.ParquetWriter(handle, schema)
        try:
            for batch in _row_batches(jsonl_path):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        finally:
            writer.close()


def _generate_rows(path: str) -> Iterator[dict[str, Any]]:
    """Generator for ``datasets.Dataset.from_generator`` (module level so it can be hashed)."""
    for batch in _row_batches(Path(path)):
        yield from batch


def _write_hf(jsonl_path: Path, dest: Path) -> None:
    """Write a ``save_to_disk`` folder, building it in a private cache that is then removed."""
    datasets = _import_datasets()
    features = record_features()
    dest.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if _iter_records_empty(jsonl_path):  # from_generator refuses no rows; save 1 shard, not 0
            ds = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
            ds.save_to_disk(str(dest), num_shards=1)
            return
        ds = datasets.Dataset.from_generator(
            _generate_rows,
            features=features,
            gen_kwargs={"path": str(jsonl_path)},
            cache_dir=str(cache),
        )
        ds.save_to_disk(str(dest))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _iter_records_empty(jsonl_path: Path) -> bool:
    """True when the output holds no record."""
    return next(_iter_records(jsonl_path), None) is None


def convert_output(jsonl_path: _PathLike, fmt: str, dest: _PathLike) -> Path:
    """Convert a JSONL output to ``fmt`` (one of :data:`OUTPUT_FORMATS`) at ``dest``.

    ``jsonl`` returns ``jsonl_path`` unchanged; ``parquet`` writes the Parquet file ``dest``;
    ``hf`` writes a Hugging Face ``save_to_disk`` folder ``dest``. Both load back without
    loss through :func:`records_from_dataset`. Every line must be a record; a bad line
    raises :class:`InputError` with its line number.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")
    source = Path(jsonl_path)
    if fmt == "jsonl":
        return source
    if not source.is_file():
        raise InputError("records file not found; check the path", file=source)
    target = Path(dest)
    (_write_parquet if fmt == "parquet" else _write_hf)(source, target)
    return target


def read_records(path: str | Path, model: type[Record] = Record) -> Iterator[Record]:
    """Stream the records of a JSONL output; a bad line raises :class:`InputError` with its line."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield model.model_validate_json(line)
            except ValueError as exc:
                raise InputError(f"not an aidsafe record: {str(exc).splitlines()[0]}", file=path, line=number) from None
