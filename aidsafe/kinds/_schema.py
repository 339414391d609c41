"""The JSON Schema sent with each request, derived from a reply kind's Pydantic model."""

from __future__ import annotations

import copy
from collections.abc import Mapping
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


def reply_schema(kind: str | ReplyKind, policy_ids: list[str], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON Schema for a reply of ``kind``, with thoughts' policy ids limited to ``policy_ids``.

    All properties are required and no others allowed (what OpenAI strict mode asks for). The
    kind's ``schema`` hook then adjusts it with the validation ``context`` (a refinement limits
    removal indexes to the thoughts that exist).
    """
    spec = get_kind(kind)
    schema = _inline(spec.model.model_json_schema())
    _constrain(schema, policy_ids)
    if spec.schema is not None:
        schema = spec.schema(schema, policy_ids, context or {})
    return schema
