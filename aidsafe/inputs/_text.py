"""Plain text: one prompt per line (the format of any path without a known suffix)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from ._common import Result, Spec, checked_item, decoded_lines, default_id


def read_text(path: Path, spec: Spec) -> Iterator[Result]:
    """Plain text: one prompt per line, blank lines skipped; the id is the prompt's number among
    the non-blank lines (:func:`~aidsafe.inputs.default_id`).

    A text line has no fields, so ``spec.id_field`` is ignored: the id is always that number
    (even when the id field is named like the prompt field).
    """
    spec = dataclasses.replace(spec, id_field=None)
    records = 0
    for number, text, problem in decoded_lines(path, spec.source):
        prompt = _strip_eol(text)
        if problem is None and not prompt.strip():
            continue
        records += 1
        if problem is not None:
            yield problem
            continue
        yield checked_item({spec.prompt_field: prompt}, spec, number, default_id(records))


def _strip_eol(text: str) -> str:
    """Remove one trailing line ending (``\\n``, ``\\r\\n`` or ``\\r``) and nothing else."""
    return text.removesuffix("\n").removesuffix("\r")
