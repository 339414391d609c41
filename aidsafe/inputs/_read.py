"""Reading a path of prompts: pick the format's reader from the suffix table, then check.

:data:`READERS` maps a lower-cased file suffix to its reader; a directory is read by
:data:`DIRECTORY_READER` and any other path by :data:`DEFAULT_READER`. Every reader has
the :data:`Reader` signature. What the readers yield is deduplicated, counted and (in
strict mode) raised here, the same for every format.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

from ..errors import InputError
from ._common import PromptItem, Result, Spec, dedup
from ._csv import read_csv
from ._dataset import read_dataset
from ._jsonl import read_jsonl
from ._parquet import read_parquet
from ._text import read_text

Reader: TypeAlias = Callable[[Path, Spec], Iterator[Result]]
"""A format reader: the path and the :class:`Spec`, to one :data:`Result` per record."""

READERS: Mapping[str, Reader] = {
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".json": read_jsonl,
    ".csv": read_csv,
    ".parquet": read_parquet,
    ".pq": read_parquet,
}
"""The reader of each file suffix (lower case, with the dot)."""

DIRECTORY_READER: Reader = read_dataset
"""The reader of a directory: a Hugging Face dataset saved with ``save_to_disk``."""

DEFAULT_READER: Reader = read_text
"""The reader of a file whose suffix is not in :data:`READERS`: plain text."""


def read_prompts(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    id_field: str = "id",
    limit: int | None = None,
    lenient: bool = False,
    problems: list[InputError] | None = None,
    extra_fields: Sequence[str] = (),
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
        extra_fields: Other fields to carry, unchecked, into each item's ``extra`` (a field
            a record lacks, or holds ``null`` in, is left out): e.g. a response that goes
            with the prompt (``aidsafe export --responses original``).

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
    return _read_checked(Path(source), source, prompt_field, id_field, limit, lenient, problems, tuple(extra_fields))


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


def reader_for(path: Path) -> Reader:
    """The reader of ``path``'s format: by the table, else the directory or default reader."""
    if path.is_dir():
        return DIRECTORY_READER
    return READERS.get(path.suffix.lower(), DEFAULT_READER)


def _read_checked(
    path: Path,
    source: str,
    prompt_field: str,
    id_field: str,
    limit: int | None,
    lenient: bool,
    problems: list[InputError] | None,
    extra_fields: tuple[str, ...] = (),
) -> Iterator[PromptItem]:
    """Yield deduplicated prompts up to ``limit``; raise if the file holds none at all.

    Strict: the first line-level problem raises. Lenient: it is collected and skipped.
    """
    if limit == 0:
        return
    spec = Spec(source, prompt_field, id_field, lenient=lenient, extra_fields=extra_fields)
    results = dedup(reader_for(path)(path, spec), id_field)
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
