"""The forms a JSON Schema must take for particular backends."""

from __future__ import annotations

from typing import Any

__all__ = ["without_string_bounds"]


def without_string_bounds(schema: Any) -> Any:
    """Drop ``maxLength``/``minLength``: llama.cpp unrolls them into grammars too large to build.

    Used for llama.cpp (in process, or its server via ``json_object``); the bounds are still
    enforced when the reply is validated.
    """
    if isinstance(schema, dict):
        return {k: without_string_bounds(v) for k, v in schema.items() if k not in ("maxLength", "minLength")}
    if isinstance(schema, list):
        return [without_string_bounds(v) for v in schema]
    return schema
