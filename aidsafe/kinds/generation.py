"""The reply kinds of the AIDSAFE recipe: intents, draft, deliberation and refinement.

Each kind is declared once, here: its Pydantic model, the template variables it may use, its
reasoning fields, how a reply changes the graph state (or, for deliberation, the turn it
records), where it may stand in a graph, and the fake backend's scripted reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from ._registry import AGENT_INPUTS, STEP_INPUTS, FakeRequest, ReplyKind, Step, register_kind

__all__ = [
    "DELIBERATION",
    "DRAFT",
    "INTENTS",
    "REFINEMENT",
    "RESPONSE_CHARS",
    "THOUGHT_CHARS",
    "Critique",
    "DeliberationReply",
    "Draft",
    "Intents",
    "Refinement",
    "Removal",
    "RemovalReason",
    "Supersede",
    "Thought",
]

RemovalReason = Literal["repetitive", "redundant", "deceptive", "policy_inconsistent"]

THOUGHT_CHARS = 1000
"""Longest thought (characters). Bounds of 1,000 or less also bind llama.cpp's grammar (larger ones
abort it), so a small model cannot run away inside a thought."""
RESPONSE_CHARS = 6000
"""Longest response (characters): room for a strong model's full, helpful answer."""


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Thought(_Reply):
    """One step of the chain of thought."""

    text: str = Field(min_length=1, max_length=THOUGHT_CHARS)
    """The reasoning step, in plain language."""
    policies: list[str] = Field(max_length=4)
    """Ids of the policies this step applies (may be empty for a step that applies none)."""


IntentText = Annotated[str, Field(min_length=1, max_length=300)]


class Intents(_Reply):
    """Reply of the intent-decomposition role."""

    explicit: list[IntentText] = Field(min_length=1, max_length=4)
    """What the user literally asks for (may be malicious)."""
    implicit: list[IntentText] = Field(max_length=4)
    """Plausible underlying needs (often benign)."""


class Draft(_Reply):
    """Reply of the initializer (and of the single-LLM baseline): a seed CoT and response."""

    thoughts: list[Thought] = Field(min_length=1, max_length=8)
    """The chain of thought."""
    response: str = Field(min_length=1, max_length=RESPONSE_CHARS)
    """The reply to the user."""


class Critique(_Reply):
    """A reviewer's critique, written before its verdict."""

    intents: str = Field(min_length=1, max_length=1000)
    """How the thoughts and the response treat each explicit and implicit intent."""
    policies: str = Field(min_length=1, max_length=1000)
    """Each policy that applies, and whether the thoughts cite and apply it correctly."""
    flaws: str = Field(min_length=1, max_length=1000)
    """Thoughts (by number) that are wrong, deceptive or unsupported, and why; or that there are none."""
    refusal: str = Field(min_length=1, max_length=1000)
    """Whether the response refuses what the policies allow (over-refusal) or helps with what they
    forbid (under-refusal); or that it does neither."""


class Supersede(_Reply):
    """An earlier thought a reviewer marks as replaced."""

    index: int = Field(ge=1)
    """1-based number of the thought in the list the reviewer was shown."""
    reason: str = Field(min_length=1, max_length=300)
    """Why it is wrong."""


class DeliberationReply(_Reply):
    """Reply of a deliberator: the critique first, then the verdict, then the changes."""

    critique: Critique
    """The review of the current thoughts and response, before any verdict."""
    agree: bool
    """True when the critique found nothing to fix: the current thoughts and response stand."""
    superseded: list[Supersede] = Field(max_length=8)
    """Earlier thoughts that are wrong, marked as replaced (empty when agreeing)."""
    thoughts: list[Thought] = Field(max_length=6)
    """New thoughts that correct or complete the reasoning (empty when agreeing)."""
    response: str = Field(max_length=RESPONSE_CHARS)
    """The improved response in full, or empty to keep the current one."""

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> DeliberationReply:
        if not self.agree and not self.thoughts and not self.superseded and not self.response.strip():
            raise ValueError("agree is false but no change was given: either agree, or supersede thoughts, add thoughts or rewrite the response")
        count = (info.context or {}).get("thought_count")
        bad = [s.index for s in self.superseded if count is not None and s.index > count]
        if bad:
            raise ValueError(f"superseded indexes {bad} are out of range: there are {count} thoughts, numbered 1 to {count}")
        return self


class Removal(_Reply):
    """One thought the refiner removed."""

    index: int = Field(ge=1)
    """1-based number of the thought in the list the refiner was shown."""
    reason: RemovalReason
    """Why it was removed."""


class Refinement(_Reply):
    """Reply of the refiner: which thoughts to strip, and the final response."""

    removed: list[Removal] = Field(max_length=48)
    """Thoughts to remove; every other thought is kept, in order."""
    response: str = Field(max_length=RESPONSE_CHARS)
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
        max_tokens=512,
        fake=_fake_intents,
        description="explicit and implicit intents of the prompt",
    )
)

# --- draft --------------------------------------------------------------------------


def _draft(step: Step) -> dict[str, Any]:
    """The first chain of thought: each thought marked as the seed's; the seed kept for the record."""
    thoughts = [{**t, "by": "seed", "round": 0} for t in step.reply["thoughts"]]
    response = step.reply["response"]
    return {"thoughts": thoughts, "response": response, "seed": {"thoughts": thoughts, "response": response}}


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
        update=_draft,
        once=True,
        max_tokens=2048,
        fake=_fake_draft,
        description="a seed chain of thought and response",
    )
)

# --- deliberation -------------------------------------------------------------------


def _turn(reply: dict[str, Any]) -> dict[str, Any]:
    """What one reviewer's turn records: its critique, its verdict, and its changes (none when it agrees)."""
    agreed = bool(reply["agree"])
    turn = {
        "critique": reply["critique"],
        "agreed": agreed,
        "superseded": [] if agreed else reply["superseded"],
        "thoughts": [] if agreed else reply["thoughts"],
        "response": "" if agreed else reply["response"],
    }
    ignored = [f"{len(reply[key])} {noun}{'s' if len(reply[key]) != 1 else ''}" for key, noun in (("superseded", "superseded mark"), ("thoughts", "thought")) if reply[key]]
    if reply["response"].strip():
        ignored.append("a response")
    if agreed and ignored:
        turn["faults"] = [{"kind": "agreed_with_changes", "detail": f"agreed, but also sent {' and '.join(ignored)}: ignored"}]
    return turn


def _fake_deliberation(req: FakeRequest) -> dict[str, Any]:
    agree = {"agree": True, "never-agree": False}.get(req.behaviour, req.n % 2 == 0)
    pid = req.policy_id
    critique = {
        "intents": "Each explicit and implicit intent is addressed.",
        "policies": f"{pid} applies and is cited." if agree else f"The thoughts do not say why {pid} applies.",
        "flaws": "No thought is wrong.",
        "refusal": "The response neither over-refuses nor under-refuses.",
    }
    if agree:
        return {"critique": critique, "agree": True, "superseded": [], "thoughts": [], "response": ""}
    return {
        "critique": critique,
        "agree": False,
        "superseded": [],
        "thoughts": [{"text": f"Correction {req.n % 1000}: state why {pid} applies.", "policies": [pid]}],
        "response": f"An improved safe answer ({req.n % 1000}).",
    }


def _thought_count(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"thought_count": len(state.get("thoughts") or [])}


def _index_enum(count: int) -> dict[str, Any]:
    return {"type": "integer", "enum": list(range(1, count + 1))} if count else {"type": "integer", "minimum": 1}


def _deliberation_schema(schema: dict[str, Any], policy_ids: list[str], context: Mapping[str, Any]) -> dict[str, Any]:
    """Limit superseded indexes to the thoughts that exist."""
    count = context.get("thought_count")
    if count is not None:
        superseded = schema["properties"]["superseded"]
        superseded["maxItems"] = min(count, superseded.get("maxItems", count))
        superseded["items"]["properties"]["index"] = _index_enum(count)
    return schema


DELIBERATION = register_kind(
    ReplyKind(
        name="deliberation",
        model=DeliberationReply,
        inputs=AGENT_INPUTS,
        reasoning=("critique", "thoughts"),
        turn=_turn,
        after=("draft",),
        context=_thought_count,
        schema=_deliberation_schema,
        max_tokens=3072,
        fake=_fake_deliberation,
        description="critique the thoughts and response, then agree, or supersede, add and rewrite",
    )
)

# --- refinement ---------------------------------------------------------------------


def _refine(step: Step) -> dict[str, Any]:
    thoughts = step.state.get("thoughts") or []
    reasons = {r["index"]: r["reason"] for r in step.reply["removed"]}
    update: dict[str, Any] = {
        "refined": [t for i, t in enumerate(thoughts, 1) if i not in reasons],
        "removed": [{**t, "reason": reasons[i]} for i, t in enumerate(thoughts, 1) if i in reasons],
        "response_before_refiner": step.state.get("response", ""),
    }
    if step.reply["response"].strip():
        update["response"] = step.reply["response"]
    return update


def _refinement_schema(schema: dict[str, Any], policy_ids: list[str], context: Mapping[str, Any]) -> dict[str, Any]:
    """Limit removal indexes to the thoughts that exist, and keep at least one."""
    count = context.get("thought_count")
    if count is not None:
        removed = schema["properties"]["removed"]
        removed["maxItems"] = max(count - 1, 0)
        removed["items"]["properties"]["index"] = _index_enum(count)
    return schema


def _fake_refinement(req: FakeRequest) -> dict[str, Any]:
    index = req.schema.get("properties", {}).get("removed", {}).get("items", {}).get("properties", {}).get("index", {})
    count = len(index.get("enum", []))
    return {"removed": [{"index": 2, "reason": "redundant"}] if count >= 3 else [], "response": "The final safe answer."}


REFINEMENT = register_kind(
    ReplyKind(
        name="refinement",
        model=Refinement,
        inputs=STEP_INPUTS,
        update=_refine,
        after=("draft",),
        context=_thought_count,
        schema=_refinement_schema,
        max_tokens=2048,
        fake=_fake_refinement,
        description="thoughts to remove (with reasons) and the final response",
    )
)
