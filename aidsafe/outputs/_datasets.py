"""Parquet files and Hugging Face ``save_to_disk`` folders of generation records.

Parquet and Hugging Face layout (lossless round trip)
-----------------------------------------------------
Arrow gives every column a single type. A dict keyed by data, such as ``usage``
(stage -> token counts) or ``models`` (role -> model label), would become one struct with the
union of all keys seen, and every row would come back with the keys it never had, filled
with ``None``; a nullable object (``error``) is merged into a struct the same way. Such
rows no longer equal the records that were written. So, explicitly:

* ``seed``, ``models``, ``usage``, ``error``, ``origin`` and ``written_by`` - :data:`JSON_FIELDS`, every
  top-level field whose shape varies from row to row: a dict keyed by data, an optional
  object, a union - are stored as **JSON strings** (null when there is none). The list is
  derived from :class:`~aidsafe.records.Record`, so a dict field added later is covered too;
* the regular nested fields - ``policy_set``, ``intents``, ``deliberation`` (with each
  turn's critique and fixed ``usage`` counts), ``thoughts`` and ``removed_thoughts`` (with
  their provenance; ``superseded`` a nullable struct), ``faults`` - stay Arrow structs and
  lists, so they remain queryable; optional strings (``response_before_refiner``) are
  nullable string columns;
* the table is built with an explicit :func:`record_features` (``datasets.Features``,
  derived from the pydantic models and written into the Parquet schema metadata), so
  empty lists in the first rows never break type inference.

``datasets.Dataset.from_parquet(dest)`` or ``datasets.load_from_disk(dest)`` followed by
:func:`records_from_dataset` gives back exactly the records of the JSONL file.
``datasets`` and ``pyarrow`` are imported only when a conversion is asked for.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from ..errors import AidsafeError, InputError
from ..records import Record
from ._atomic import atomic_binary
from ._lines import PathLike, read_records

__all__ = ["JSON_FIELDS", "OUTPUT_FORMATS", "convert_output", "record_features", "records_from_dataset"]

OUTPUT_FORMATS = ("jsonl", "parquet", "hf")
"""Layouts :func:`convert_output` can write."""

_BATCH = 1000


def _import_datasets() -> Any:
    """Import ``datasets`` (and with it ``pyarrow``), or explain how to install it."""
    try:
        import datasets
    except ImportError:
        raise AidsafeError("writing parquet or hf output needs the 'datasets' package: pip install datasets") from None
    return datasets


def _optional(annotation: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0]
    return None


def _shape(annotation: Any, *, nested: bool = False) -> Any:
    """The fixed Arrow shape of a field type, or None when its shape varies from row to row.

    A shape is a dtype name (``"string"``, ``"int64"``, ``"bool"``, ``"float64"``), a one-item
    list (a list of that shape) or a dict (a struct). An optional scalar is its (nullable)
    scalar; an optional object is a (nullable) struct inside a list or struct, and has no fixed
    shape at the top level (it is stored as JSON, as it always was). Dicts keyed by data, unions
    and anything else have no fixed shape.
    """
    scalars = {str: "string", bool: "bool", int: "int64", float: "float64"}
    if annotation in scalars:
        return scalars[annotation]
    inner_type = _optional(annotation)
    if inner_type is not None:
        if inner_type in scalars:
            return scalars[inner_type]
        return _shape(inner_type, nested=True) if nested else None
    origin = get_origin(annotation)
    if origin is Literal:
        kinds = {type(value) for value in get_args(annotation)}
        return scalars.get(kinds.pop()) if len(kinds) == 1 else None
    if origin is list:
        inner = _shape(get_args(annotation)[0], nested=True)
        return None if inner is None else [inner]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = {name: _shape(info.annotation, nested=True) for name, info in annotation.model_fields.items()}
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
    for record in read_records(jsonl_path, Record):
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
    with atomic_binary(dest) as handle:
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
        if next(read_records(jsonl_path, Record), None) is None:  # from_generator refuses no rows; save 1 shard, not 0
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


def convert_output(jsonl_path: PathLike, fmt: str, dest: PathLike) -> Path:
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
