"""A Hugging Face dataset directory, saved with ``Dataset.save_to_disk``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import PROMPT_FIELD_HINT, Result, Spec, checked_item, default_id


def read_dataset(path: Path, spec: Spec) -> Iterator[Result]:
    """A Hugging Face dataset directory; row ``i`` (0-based) has line and default id ``i + 1``
    (:func:`~aidsafe.inputs.default_id`).

    Its records are rows, so errors speak of "this row" (``spec.unit``).
    """
    spec = dataclasses.replace(spec, unit="row")
    dataset = _load_dataset(path, spec.source)
    columns = list(dataset.column_names)
    if spec.prompt_field not in columns:
        found = ", ".join(repr(name) for name in columns)
        raise InputError(
            f"dataset has no prompt column {spec.prompt_field!r}; columns: [{found}]; "
            f"{PROMPT_FIELD_HINT}",
            file=spec.source,
            field=spec.prompt_field,
        )
    wanted = list(dict.fromkeys(name for name in (spec.prompt_field, spec.id_field, *spec.extra_fields)
                                if name is not None and name in columns))
    if hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns(wanted)
    for index, row in enumerate(dataset):
        yield checked_item(row, spec, index + 1, default_id(index + 1))


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


def _single_split(splits: Mapping[Any, Any], source: str) -> Any:
    """Return the only split of a DatasetDict, or raise naming the splits found.

    The keys are typed ``Any``: a DatasetDict's are ``str | NamedSplit``, in practice str.
    """
    names = sorted(splits)
    if len(names) != 1:
        raise InputError(
            f"dataset has {len(names)} splits {names!r}; expected exactly one - "
            "save a single split (e.g. dataset_dict['train'].save_to_disk(...))",
            file=source,
        )
    return splits[names[0]]
