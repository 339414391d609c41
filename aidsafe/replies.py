"""Structured replies of each role, as Pydantic models, and the JSON Schemas sent to the backend.

Every model call asks for JSON matching one of these models; the schema is sent with the request
(the form depends on the backend, see :mod:`aidsafe.models`). Policy ids are constrained to the
active pack in the schema (``enum``) and checked again after parsing, because not every server
enforces schemas.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

__all__ = [
    "Thought",
    "Intents",
    "Draft",
    "DeliberationReply",
    "Removal",
    "Refinement",
    "RemovalReason",
    "REPLY_MODELS",
    "reply_schema",
    "without_string_bounds",
]

RemovalReason = Literal["repetitive", "redundant", "deceptive", "policy_inconsistent"]


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Thought(_Reply):
    """One step of the chain of thought."""

    text: str = Field(min_length=1, max_length=600)
    """The reasoning step, in plain language."""
    policies: list[str] = Field(max_length=4)
    """Ids of the policies this step applies (may be empty for a step that applies none)."""


class Intents(_Reply):
    """Reply of the intent-decomposition role."""

    explicit: list[str] = Field(min_length=1, max_length=4)
    """What the user literally asks for (may be malicious)."""
    implicit: list[str] = Field(max_length=4)
    """Plausible underlying needs (often benign)."""


class Draft(_Reply):
    """Reply of the initializer (and of the single-LLM baseline): a seed CoT and response."""

    thoughts: list[Thought] = Field(min_length=1, max_length=6)
    """The chain of thought."""
    response: str = Field(min_length=1, max_length=2000)
    """The reply to the user."""


class DeliberationReply(_Reply):
    """Reply of a deliberator: agree, or add/correct thoughts and update the response."""

    agree: bool
    """True when the current thoughts and response need no change (consensus)."""
    thoughts: list[Thought] = Field(max_length=4)
    """New or corrected thoughts (empty when agreeing)."""
    response: str = Field(max_length=2000)
    """The updated response (may be empty when agreeing: the current one stands)."""

    @model_validator(mode="after")
    def _disagree_needs_change(self) -> DeliberationReply:
        if not self.agree and not self.thoughts and not self.response.strip():
            raise ValueError("agree is false but no thoughts or response were given: either agree, or give corrections")
        return self


class Removal(_Reply):
    """One thought the refiner removed."""

    index: int = Field(ge=1)
    """1-based number of the thought in the list the refiner was shown."""
    reason: RemovalReason
    """Why it was removed."""


class Refinement(_Reply):
    """Reply of the refiner: which thoughts to strip, and the final response."""

    removed: list[Removal] = Field(max_length=24)
    """Thoughts to remove; every other thought is kept, in order."""
    response: str = Field(max_length=2000)
    """The final response to the user; empty keeps the last response unchanged."""

    @model_validator(mode="after")
    def _indexes_in_range(self, info: ValidationInfo) -> Refinement:
        count = (info.context or {}).get("thought_count")
        if count is not None:
            bad = [r.index for r in self.removed if r.index > count]
            if bad:
                raise ValueError(f"removed indexes {bad} are out of range: there are {count} thoughts, numbered 1 to {count}")
            if count and len({r.index for r in self.removed}) >= count:
                raise ValueError("every thought was removed: keep at least one")
        return self


REPLY_MODELS: dict[str, type[_Reply]] = {
    "intents": Intents,
    "draft": Draft,
    "deliberation": DeliberationReply,
    "refinement": Refinement,
}
"""Reply kinds a role may declare in a graph file (``reply:``)."""


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


def reply_schema(kind: str, policy_ids: list[str], *, thought_count: int | None = None) -> dict[str, Any]:
    """JSON Schema for reply ``kind``, with thoughts' policy ids limited to ``policy_ids``.

    All properties are required and no others allowed (what OpenAI strict mode asks for). For a
    refinement, ``thought_count`` limits removal indexes to the thoughts that exist and keeps at
    least one thought.
    """
    schema = _inline(REPLY_MODELS[kind].model_json_schema())

    def constrain(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                node["required"] = list(props)
                node["additionalProperties"] = False
                if set(props) == {"text", "policies"} and policy_ids:
                    props["policies"]["items"] = {"type": "string", "enum": list(policy_ids)}
            for value in node.values():
                constrain(value)
        elif isinstance(node, list):
            for value in node:
                constrain(value)

    constrain(schema)
    if kind == "refinement" and thought_count is not None:
        removed = schema["properties"]["removed"]
        removed["maxItems"] = max(thought_count - 1, 0)
        removed["items"]["properties"]["index"] = {"type": "integer", "enum": list(range(1, thought_count + 1))}
    return schema


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
