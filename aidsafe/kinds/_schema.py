"""The JSON Schema sent with each request, derived from a reply kind's Pydantic model."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from typing import Any

from ._registry import ReplyKind, get_kind

__all__ = ["reply_schema"]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``$ref``s into ``$defs`` and drop titles: simpler schemas suit every grammar engine."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items() if k not in ("title", "$defs", "description")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _constrain(node: Any, policy_ids: list[str]) -> None:
    """Require every property and forbid others (OpenAI strict mode); limit thoughts' policy ids."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            node["required"] = list(props)
            node["additionalProperties"] = False
            if set(props) == {"text", "policies"} and policy_ids:
                props["policies"]["items"] = {"type": "string", "enum": list(policy_ids)}
        for value in node.values():
            _constrain(value, policy_ids)
    elif isinstance(node, list):
        for value in node:
            _constrain(value, policy_ids)


def _build(spec: ReplyKind, policy_ids: list[str], context: Mapping[str, Any]) -> dict[str, Any]:
    schema = _inline(spec.model.model_json_schema())
    _constrain(schema, policy_ids)
    if spec.schema is not None:
        schema = spec.schema(schema, policy_ids, context)
    return schema


def _freeze(value: Any) -> Hashable:
    """A hashable form of a context value (dicts and lists become tuples); raises TypeError if none."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    hash(value)
    return value


_CACHE: dict[tuple[ReplyKind, tuple[str, ...], Hashable], dict[str, Any]] = {}
_CACHE_SIZE = 4096


def reply_schema(kind: str | ReplyKind, policy_ids: list[str], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON Schema for a reply of ``kind``, with thoughts' policy ids limited to ``policy_ids``.

    All properties are required and no others allowed (what OpenAI strict mode asks for). The
    kind's ``schema`` hook then adjusts it with the validation ``context`` (a refinement limits
    removal indexes to the thoughts that exist).

    The schema is built once per kind, policy ids and context (Pydantic's ``model_json_schema``
    was a fifth of the client's CPU per call when built per call) and the same dict is returned
    each time: treat it as read-only.
    """
    spec = get_kind(kind)
    ctx = context or {}
    try:
        key = (spec, tuple(policy_ids), _freeze(ctx))
        schema = _CACHE.get(key)
    except TypeError:  # a context value that cannot be a cache key: build it afresh
        return _build(spec, list(policy_ids), ctx)
    if schema is None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        schema = _CACHE[key] = _build(spec, list(policy_ids), ctx)
    return schema
