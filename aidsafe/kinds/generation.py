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
    "Agreement",
    "Critique",
    "DeliberationReply",
    "Draft",
    "Intents",
    "Refinement",
    "Removal",
    "RemovalReason",
    "Revision",
    "Supersede",
    "Thought",
    "agreement",
    "revision",
    "revision_schema",
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


class Agreement(_Reply):
    """The verdict of a reviewer whose critique found nothing to fix: no changes."""

    agree: Literal[True]
    superseded: list[Supersede] = Field(max_length=0)
    """Empty: an agreeing reviewer changes nothing."""
    thoughts: list[Thought] = Field(max_length=0)
    """Empty: an agreeing reviewer changes nothing."""
    response: str = Field(max_length=0)
    """Empty: the current response stands."""


class Revision(_Reply):
    """The verdict of a reviewer who disagrees: it must change the chain of thought, with at least
    one new thought (the correction), and may supersede wrong thoughts and rewrite the response."""

    agree: Literal[False]
    superseded: list[Supersede] = Field(max_length=8)
    """Earlier thoughts that are wrong, marked as replaced."""
    thoughts: list[Thought] = Field(min_length=1, max_length=6)
    """New thoughts that correct or complete the reasoning: at least one."""
    response: str = Field(max_length=RESPONSE_CHARS)
    """The improved response in full, or empty to keep the current one."""

    @model_validator(mode="after")
    def _in_range(self, info: ValidationInfo) -> Revision:
        count = (info.context or {}).get("thought_count")
        bad = [s.index for s in self.superseded if count is not None and s.index > count]
        if bad:
            raise ValueError(f"superseded indexes {bad} are out of range: there are {count} thoughts, numbered 1 to {count}")
        return self


class DeliberationReply(_Reply):
    """Reply of a deliberator: the critique first, then the verdict with its changes.

    The verdict is one of two shapes (a JSON Schema ``anyOf`` one level down, so that OpenAI's
    strict mode accepts it as well as vLLM's and llama.cpp's grammars): an :class:`Agreement` with
    no changes, or a :class:`Revision` that adds at least one thought. A reviewer that disagrees
    cannot rewrite only the response, leaving a chain of thought that says otherwise."""

    critique: Critique
    """The review of the current thoughts and response, before any verdict."""
    verdict: Agreement | Revision
    """``{"agree": true, ...}`` with empty changes, or ``{"agree": false, ...}`` with the changes."""


class Removal(_Reply):
    """One thought the refiner removed."""

    index: int = Field(ge=1)
    """1-based number of the thought in the list the refiner was shown."""
    reason: RemovalReason
    """Why it was removed."""


class Refinement(_Reply):
    """Reply of the refiner: which thoughts to strip (and, where the graph lets it, the final response).

    By default the refiner filters thoughts, as the paper's does: the final response is the
    deliberation's last agreed one, and the schema sent has no ``response``. A refiner role with
    ``params: {rewrite_response: true}`` also writes the final response."""

    removed: list[Removal] = Field(max_length=48)
    """Thoughts to remove; every other thought is kept, in order. Superseded thoughts are removed
    whether listed or not."""
    response: str = Field(default="", max_length=RESPONSE_CHARS)
    """With ``rewrite_response``: the final response to the user; empty keeps the last response."""

    @model_validator(mode="after")
    def _indexes_in_range(self, info: ValidationInfo) -> Refinement:
        context = info.context or {}
        count = context.get("thought_count")
        if count is not None:
            bad = [r.index for r in self.removed if r.index > count]
            if bad:
                raise ValueError(f"removed indexes {bad} are out of range: there are {count} thoughts, numbered 1 to {count}")
            kept = count - len({r.index for r in self.removed} | set(context.get("superseded_indexes", ())))
            if count and kept < 1:
                raise ValueError("every thought would be removed (superseded thoughts are removed anyway): keep at least one")
        if self.response.strip() and context and not context.get("rewrite_response", False):
            raise ValueError("'response' is not the refiner's to write in this graph (the deliberation's response is final): leave it out")
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
    verdict = reply["verdict"]
    return {
        "critique": reply["critique"],
        "agreed": bool(verdict["agree"]),
        "superseded": verdict["superseded"],
        "thoughts": verdict["thoughts"],
        "response": verdict["response"],
    }


def agreement(critique: dict[str, Any]) -> dict[str, Any]:
    """A deliberation reply that agrees (the wire format, for scripted models and tests)."""
    return {"critique": critique, "verdict": {"agree": True, "superseded": [], "thoughts": [], "response": ""}}


def revision(critique: dict[str, Any], thoughts: list[dict[str, Any]], response: str = "", superseded: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A deliberation reply that disagrees (the wire format, for scripted models and tests)."""
    return {"critique": critique, "verdict": {"agree": False, "superseded": superseded or [], "thoughts": thoughts, "response": response}}


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
        return agreement(critique)
    return revision(critique, [{"text": f"Correction {req.n % 1000}: state why {pid} applies.", "policies": [pid]}], f"An improved safe answer ({req.n % 1000}).")


def _thought_count(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"thought_count": len(state.get("thoughts") or [])}


def _index_enum(count: int) -> dict[str, Any]:
    return {"type": "integer", "enum": list(range(1, count + 1))} if count else {"type": "integer", "minimum": 1}


def revision_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The ``agree: false`` branch of a deliberation reply's JSON Schema."""
    return next(b for b in schema["properties"]["verdict"]["anyOf"] if b["properties"]["agree"]["enum"] == [False])


def _deliberation_schema(schema: dict[str, Any], policy_ids: list[str], context: Mapping[str, Any]) -> dict[str, Any]:
    """Spell each verdict's ``agree`` as a one-value ``enum`` (every engine and OpenAI's strict mode
    take ``enum``; ``const`` is less widely documented); limit superseded indexes to the thoughts
    that exist."""
    for branch in schema["properties"]["verdict"]["anyOf"]:
        agree = branch["properties"]["agree"]
        if "const" in agree:
            agree["enum"] = [agree.pop("const")]
    count = context.get("thought_count")
    if count is not None:
        superseded = revision_schema(schema)["properties"]["superseded"]
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
        options=(("history_chars", 8000),),
        max_tokens=3072,
        fake=_fake_deliberation,
        description="critique the thoughts and response, then agree, or add thoughts (and supersede, rewrite)",
    )
)

# --- refinement ---------------------------------------------------------------------


def _refine(step: Step) -> dict[str, Any]:
    """Strip the removed thoughts, and every superseded one the refiner did not list (reason
    ``superseded``): a thought a reviewer replaced never reaches training data. The response
    changes only where the graph lets the refiner rewrite it."""
    thoughts = step.state.get("thoughts") or []
    reasons: dict[int, str] = {r["index"]: r["reason"] for r in step.reply["removed"]}
    reasons.update({i: "superseded" for i, t in enumerate(thoughts, 1) if t.get("superseded") and i not in reasons})
    before = step.state.get("response", "")
    update: dict[str, Any] = {
        "refined": [t for i, t in enumerate(thoughts, 1) if i not in reasons],
        "removed": [{**t, "reason": reasons[i]} for i, t in enumerate(thoughts, 1) if i in reasons],
        "response_before_refiner": before,
        "refiner_rewrote_response": False,
    }
    rewritten = (step.reply.get("response") or "").strip()
    if rewritten and step.reply["response"] != before:
        update["response"] = step.reply["response"]
        update["refiner_rewrote_response"] = True
    return update


def _superseded_indexes(state: Mapping[str, Any]) -> dict[str, Any]:
    thoughts = state.get("thoughts") or []
    return {"thought_count": len(thoughts), "superseded_indexes": tuple(i for i, t in enumerate(thoughts, 1) if t.get("superseded"))}


def _refinement_schema(schema: dict[str, Any], policy_ids: list[str], context: Mapping[str, Any]) -> dict[str, Any]:
    """Limit removal indexes to the thoughts that exist and keep at least one; no ``response``
    unless the graph lets the refiner rewrite it."""
    count = context.get("thought_count")
    if count is not None:
        superseded = set(context.get("superseded_indexes", ()))
        removable = [i for i in range(1, count + 1) if i not in superseded]  # superseded ones go anyway
        removed = schema["properties"]["removed"]
        removed["maxItems"] = max(len(removable) - 1, 0)
        removed["items"]["properties"]["index"] = {"type": "integer", "enum": removable} if removable else _index_enum(count)
    if not context.get("rewrite_response", False):
        schema["properties"].pop("response", None)
        schema["required"] = [k for k in schema["required"] if k != "response"]
    return schema


def _fake_refinement(req: FakeRequest) -> dict[str, Any]:
    props = req.schema.get("properties", {})
    removable = props.get("removed", {}).get("items", {}).get("properties", {}).get("index", {}).get("enum", [])
    reply: dict[str, Any] = {"removed": [{"index": removable[1], "reason": "redundant"}] if len(removable) >= 3 else []}
    if "response" in props:
        reply["response"] = "The final safe answer."
    return reply


REFINEMENT = register_kind(
    ReplyKind(
        name="refinement",
        model=Refinement,
        inputs=STEP_INPUTS,
        update=_refine,
        after=("draft",),
        context=_superseded_indexes,
        schema=_refinement_schema,
        options=(("history_chars", 8000), ("rewrite_response", False)),
        max_tokens=2048,
        fake=_fake_refinement,
        description="thoughts to remove (with reasons); the final response where the graph lets it",
    )
)
