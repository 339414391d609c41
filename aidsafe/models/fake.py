"""A deterministic fake chat model for tests, chosen like a real one (``--backend fake``).

``--model`` picks the behaviour:

- ``default``: schema-valid replies citing the first policy id of the active pack; a deliberator
  agrees or not from a hash of its messages (deterministic);
- ``agree`` / ``never-agree``: deliberators always / never agree;
- ``garbage``: every reply is invalid JSON (exercises repair-then-fail);
- ``garbage-once``: the first reply to each request is invalid, the repair succeeds;
- ``unknown-policy``: thoughts cite a policy id that is not in the pack;
- ``refuse``: every reply is a plain-text refusal.

Tests may also pass any ``responder(messages, schema_name, schema) -> str``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from .base import ChatModel, Completion, ModelSettings

__all__ = ["FakeChatModel", "BEHAVIOURS"]

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


def _digest(messages: list[dict[str, str]]) -> int:
    return int(hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:8], 16)


def _thought_count(messages: list[dict[str, str]]) -> int:
    user = messages[-1]["content"] if messages else ""
    return sum(1 for line in user.splitlines() if line[:1].isdigit() and ". " in line[:5])


class FakeChatModel(ChatModel):
    """Answers from a script, never from the network."""

    def __init__(self, settings: ModelSettings | None = None, responder: Responder | None = None) -> None:
        self.settings = settings or ModelSettings(backend="fake", model="default")
        behaviour = self.settings.model or "default"
        if responder is None and behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown fake behaviour {behaviour!r}; choose one of {', '.join(BEHAVIOURS)}")
        self.behaviour = behaviour
        self.responder = responder
        self.calls: list[dict[str, Any]] = []

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str) -> Completion:
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
        pid = "Z99" if b == "unknown-policy" else _policy_ids(schema)[0]
        n = _digest(messages)
        if kind == "intents":
            return json.dumps({"explicit": [f"explicit intent {n % 97}"], "implicit": ["learn about the topic safely"]})
        if kind == "draft":
            return json.dumps(
                {
                    "thoughts": [
                        {"text": f"The request touches policy {pid}.", "policies": [pid]},
                        {"text": "The benign part can be answered helpfully.", "policies": []},
                    ],
                    "response": f"A safe, helpful answer ({n % 1000}).",
                }
            )
        if kind == "deliberation":
            agree = {"agree": True, "never-agree": False}.get(b, n % 2 == 0)
            if agree:
                return json.dumps({"agree": True, "thoughts": [], "response": ""})
            return json.dumps(
                {
                    "agree": False,
                    "thoughts": [{"text": f"Correction {n % 1000}: state why {pid} applies.", "policies": [pid]}],
                    "response": f"An improved safe answer ({n % 1000}).",
                }
            )
        if kind == "refinement":
            count = _thought_count(messages)
            removed = [{"index": 2, "reason": "redundant"}] if count >= 3 else []
            return json.dumps({"removed": removed, "response": "The final safe answer."})
        if kind == "scores":
            props = schema.get("properties", {})
            ids = props.get("applicable_policies", {}).get("items", {}).get("enum", [pid])
            scores = {m: 1 + (n >> i) % 5 for i, m in enumerate(k for k in props if k != "applicable_policies")}
            return json.dumps({"applicable_policies": ids[:1], **scores})
        if kind == "pairwise":
            return json.dumps({"winner": ("first", "second", "tie")[n % 3]})
        raise ValueError(f"fake model has no script for reply kind {kind!r}")
