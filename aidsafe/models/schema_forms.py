"""The forms a JSON Schema must take for particular backends."""

from __future__ import annotations

from typing import Any

__all__ = ["LLAMA_CPP_MAX_LENGTH", "for_llama_cpp"]

LLAMA_CPP_MAX_LENGTH = 1000
"""The longest string bound llama.cpp's grammar engine takes: it unrolls a bound into nested rules,
and above about 1,000 characters (measured with llama-cpp-python 0.3.36) it aborts the whole
process ("number of rules that are going to be repeated ... exceeds sane defaults")."""


def for_llama_cpp(schema: Any, *, clamp: int | None = None, items: int | None = None) -> Any:
    """The schema as llama.cpp's grammar engine can take it (in process, or its server via ``json_object``).

    String bounds up to :data:`LLAMA_CPP_MAX_LENGTH` stay: a ``maxLength`` stops a small model that
    runs away inside a string, a ``minLength`` one that leaves it empty. Larger ones are dropped;
    validation still enforces them. For a small model whose long outputs are rambling, never
    content, ``clamp`` cuts every free-text string (no ``enum``) to at most that many characters,
    and ``items`` every list to at most that many items (never below its ``minItems``).
    """
    if isinstance(schema, dict):
        out = {
            k: for_llama_cpp(v, clamp=clamp, items=items)
            for k, v in schema.items()
            if not (k in ("minLength", "maxLength") and isinstance(v, int) and v > LLAMA_CPP_MAX_LENGTH)
        }
        if clamp is not None and out.get("type") == "string" and "enum" not in out:
            out["maxLength"] = min(int(schema.get("maxLength", clamp)), clamp)
        if items is not None and out.get("type") == "array":
            out["maxItems"] = max(min(int(schema.get("maxItems", items)), items), int(schema.get("minItems", 0)))
        return out
    if isinstance(schema, list):
        return [for_llama_cpp(v, clamp=clamp, items=items) for v in schema]
    return schema
