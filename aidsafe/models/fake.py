"""A deterministic fake chat model for tests, chosen like a real one (``--backend fake``).

``--model`` picks the behaviour:

- ``default``: schema-valid replies citing the first policy id of the active pack; a deliberator
  agrees or not from a hash of its messages (deterministic);
- ``agree`` / ``never-agree``: deliberators always / never agree (and the ear-whisperer's safety
  scorer finds a violation at once / never);
- ``garbage``: every reply is invalid JSON (exercises repair-then-fail);
- ``garbage-once``: the first reply to each request is invalid, the repair succeeds;
- ``unknown-policy``: thoughts cite a policy id that is not in the pack;
- ``refuse``: every reply is a plain-text refusal.

Tests may also pass any ``responder(messages, schema_name, schema) -> str``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import AidsafeError
from ..kinds import FakeRequest, get_kind
from .base import ChatModel, Completion, ModelSettings
from .registry import register_backend

__all__ = ["BEHAVIOURS", "FakeChatModel"]

Responder = Callable[[list[dict[str, str]], str, dict[str, Any]], str]

BEHAVIOURS = ("default", "agree", "never-agree", "garbage", "garbage-once", "unknown-policy", "refuse")


def _policy_ids(schema: dict[str, Any]) -> list[str]:
    """The pack's ids, read from the enum the schema carries."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties", {})
            if "policies" in props and "text" in props:
                found.extend(props["policies"].get("items", {}).get("enum", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found or ["P1"]


@register_backend("fake")
class FakeChatModel(ChatModel):
    """Answers from a script, never from the network.

    The script of each reply kind is declared with the kind (``ReplyKind.fake``); the behaviour
    only decides what every kind has in common (garbage, refusals, an unknown policy id) and is
    passed on for the kinds that care (a deliberator that always or never agrees).
    """

    @classmethod
    def check(cls, settings: ModelSettings) -> None:
        if (settings.model or "default") not in BEHAVIOURS:
            raise AidsafeError(f"unknown fake behaviour {settings.model!r}; choose one of {', '.join(BEHAVIOURS)}")

    def __init__(self, settings: ModelSettings | None = None, responder: Responder | None = None) -> None:
        self.settings = settings or ModelSettings(backend="fake", model="default")
        behaviour = self.settings.model or "default"
        if responder is None and behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown fake behaviour {behaviour!r}; choose one of {', '.join(BEHAVIOURS)}")
        self.behaviour = behaviour
        self.responder = responder
        self.calls: list[dict[str, Any]] = []

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        self.calls.append({"messages": messages, "schema_name": schema_name})
        if self.responder is not None:
            text = self.responder(messages, schema_name, schema)
        else:
            text = self._scripted(messages, schema_name, schema)
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(text.split()), finish_reason="stop")

    def _scripted(self, messages: list[dict[str, str]], kind: str, schema: dict[str, Any]) -> str:
        b = self.behaviour
        is_repair = len(messages) > 2
        if b == "garbage" or (b == "garbage-once" and not is_repair):
            return "this is { not json"
        if b == "refuse":
            return "I'm sorry, but I can't help with that."
        script = get_kind(kind).fake
        if script is None:
            raise ValueError(f"fake model has no script for reply kind {kind!r}")
        pid = "Z99" if b == "unknown-policy" else _policy_ids(schema)[0]
        reply = script(FakeRequest(behaviour=b, messages=messages, schema=schema, policy_id=pid))
        return reply if isinstance(reply, str) else json.dumps(reply)
