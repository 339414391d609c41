"""The reply kinds of the AIDSAFE recipe: intents, draft, deliberation and refinement.

Each kind is declared once, here: its Pydantic model, the template variables it may use, its
reasoning fields, how a reply changes the graph state (or, for deliberation, the turn it
records), where it may stand in a graph, and the fake backend's scripted reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from ._registry import FakeRequest, ReplyKind, Step, register_kind

__all__ = [
    "DELIBERATION",
    "DRAFT",
    "INTENTS",
    "REFINEMENT",
    "DeliberationReply",
    "Draft",
    "Intents",
    "Refinement",
    "Removal",
    "RemovalReason",
    "Thought",
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


# --- intents ------------------------------------------------------------------------


def _fake_intents(req: FakeRequest) -> dict[str, Any]:
    return {"explicit": [f"explicit intent {req.n % 97}"], "implicit": ["learn about the topic safely"]}


INTENTS = register_kind(
    ReplyKind(
        name="intents",
        model=Intents,
        reasoning=("explicit", "implicit"),
        update=lambda step: {"intents": step.reply},
        fake=_fake_intents,
        description="explicit and implicit intents of the prompt",
    )
)

# --- draft --------------------------------------------------------------------------


def _fake_draft(req: FakeRequest) -> dict[str, Any]:
    pid = req.policy_id
    return {
        "thoughts": [
            {"text": f"The request touches policy {pid}.", "policies": [pid]},
            {"text": "The benign part can be answered helpfully.", "policies": []},
        ],
        "response": f"A safe, helpful answer ({req.n % 1000}).",
    }


DRAFT = register_kind(
    ReplyKind(
        name="draft",
        model=Draft,
        inputs=frozenset({"intents"}),
        reasoning=("thoughts",),
        update=lambda step: {"thoughts": step.reply["thoughts"], "response": step.reply["response"]},
        once=True,
        fake=_fake_draft,
        description="a seed chain of thought and response",
    )
)

# --- deliberation -------------------------------------------------------------------


def _turn(reply: dict[str, Any]) -> dict[str, Any]:
    agreed = bool(reply["agree"])
    return {
        "agreed": agreed,
        "thoughts": [] if agreed else reply["thoughts"],
        "response": "" if agreed else reply["response"],
    }


def _fake_deliberation(req: FakeRequest) -> dict[str, Any]:
    agree = {"agree": True, "never-agree": False}.get(req.behaviour, req.n % 2 == 0)
    if agree:
        return {"agree": True, "thoughts": [], "response": ""}
    pid = req.policy_id
    return {
        "agree": False,
        "thoughts": [{"text": f"Correction {req.n % 1000}: state why {pid} applies.", "policies": [pid]}],
        "response": f"An improved safe answer ({req.n % 1000}).",
    }


DELIBERATION = register_kind(
    ReplyKind(
        name="deliberation",
        model=DeliberationReply,
        inputs=frozenset({"intents", "thoughts", "response", "round", "max_rounds", "agent"}),
        reasoning=("thoughts",),
        turn=_turn,
        after=("draft",),
        fake=_fake_deliberation,
        description="agree with the thoughts and response, or correct and extend them",
    )
)

# --- refinement ---------------------------------------------------------------------


def _refine(step: Step) -> dict[str, Any]:
    thoughts = step.state.get("thoughts") or []
    reasons = {r["index"]: r["reason"] for r in step.reply["removed"]}
    update: dict[str, Any] = {
        "refined": [t for i, t in enumerate(thoughts, 1) if i not in reasons],
        "removed": [{**t, "reason": reasons[i]} for i, t in enumerate(thoughts, 1) if i in reasons],
    }
    if step.reply["response"].strip():
        update["response"] = step.reply["response"]
    return update


def _thought_count(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"thought_count": len(state.get("thoughts") or [])}


def _refinement_schema(schema: dict[str, Any], policy_ids: list[str], context: Mapping[str, Any]) -> dict[str, Any]:
    """Limit removal indexes to the thoughts that exist, and keep at least one."""
    count = context.get("thought_count")
    if count is not None:
        removed = schema["properties"]["removed"]
        removed["maxItems"] = max(count - 1, 0)
        removed["items"]["properties"]["index"] = {"type": "integer", "enum": list(range(1, count + 1))}
    return schema


def _fake_refinement(req: FakeRequest) -> dict[str, Any]:
    index = req.schema.get("properties", {}).get("removed", {}).get("items", {}).get("properties", {}).get("index", {})
    count = len(index.get("enum", []))
    return {"removed": [{"index": 2, "reason": "redundant"}] if count >= 3 else [], "response": "The final safe answer."}


REFINEMENT = register_kind(
    ReplyKind(
        name="refinement",
        model=Refinement,
        inputs=frozenset({"intents", "thoughts", "response"}),
        update=_refine,
        after=("draft",),
        context=_thought_count,
        schema=_refinement_schema,
        fake=_fake_refinement,
        description="thoughts to remove (with reasons) and the final response",
    )
)
