"""Parquet: row ``i`` (0-based) has line and default id ``i + 1`` (as every reader numbers its
records, :func:`~aidsafe.inputs.default_id`); the file is streamed by row groups."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import InputError
from ._common import PROMPT_FIELD_HINT, Result, Spec, checked_item, default_id


def read_parquet(path: Path, spec: Spec) -> Iterator[Result]:
    """A Parquet file, in the shape of aidsafe's format readers: row ``i`` (0-based) has line and
    default id ``i + 1``. Streams row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = replace(spec, unit="row")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"not a Parquet file: {exc}", file=spec.source) from None
    columns = list(parquet.schema_arrow.names)
    if spec.prompt_field not in columns:
        found = ", ".join(repr(name) for name in columns)
        raise InputError(
            f"Parquet file has no prompt column {spec.prompt_field!r}; columns: [{found}]; {PROMPT_FIELD_HINT}",
            file=spec.source, field=spec.prompt_field,
        )
    wanted = list(dict.fromkeys(name for name in (spec.prompt_field, spec.id_field, *spec.extra_fields)
                                if name is not None and name in columns))
    index = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=wanted):
        for row in batch.to_pylist():
            yield checked_item(row, spec, index + 1, default_id(index + 1))
            index += 1
