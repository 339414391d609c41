"""JSON Lines: one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import Result, Spec, checked_item, decoded_lines, default_id


def read_jsonl(path: Path, spec: Spec) -> Iterator[Result]:
    """JSON Lines: one JSON object per line, blank lines skipped; the default id is the record's
    number among the non-blank lines (:func:`~aidsafe.inputs.default_id`)."""
    records = 0
    for number, text, problem in decoded_lines(path, spec.source):
        if problem is None and not text.strip():
            continue
        records += 1
        if problem is not None:
            yield problem
            continue
        record = _parse_json_object(text, spec.source, number)
        if isinstance(record, InputError):
            yield record
        else:
            yield checked_item(record, spec, number, default_id(records))


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
