"""The reply-kind registry: one declaration per kind of structured reply.

A *reply kind* is what a role answers: its Pydantic model (validated, and sent to the backend as
a JSON Schema), the template variables its role's template may use, the fields that hold the
agent's reasoning (checked for refusals), how a reply updates the graph state (a role node) or
what turn it is in a loop (a loop agent), where it may stand in a graph's flow, and the scripted
replies of the fake backend. Every part of aidsafe that depends on the kind reads it from here:
the graph compiler and its checks, the templates, the refusal check, the structured call and the
fake backend. A new role is one :func:`register_kind` call plus a template file.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

__all__ = [
    "AGENT_INPUTS",
    "COMMON_INPUTS",
    "STEP_INPUTS",
    "FakeRequest",
    "ReplyKind",
    "Step",
    "get_kind",
    "kind_names",
    "register_kind",
    "unregister_kind",
]

COMMON_INPUTS = frozenset({"policies", "policy_set", "prompt", "schema"})
"""Variables every template may use: the policy pack, the user prompt and the reply's JSON Schema."""
STEP_INPUTS = frozenset({"intents", "thoughts", "response", "deliberation", "critiques", "critiques_omitted"})
"""What a graph provides to a role node besides :data:`COMMON_INPUTS`: the state so far (thoughts
with their provenance, the deliberation turns, and ``critiques``: the turns' critiques and
changes, newest kept within the role's ``history_chars`` budget, with ``critiques_omitted`` the
number of earlier turns left out)."""
AGENT_INPUTS = STEP_INPUTS | {"agent", "round", "max_rounds", "agents", "mode", "consensus"}
"""What a graph provides to a loop agent besides: its name, the round and the budget, how many
agents there are, the loop's mode (``sequential`` or ``parallel``) and its consensus rule in words."""


@dataclass(frozen=True)
class FakeRequest:
    """What a scripted fake reply is made from (see :mod:`aidsafe.models.fake`)."""

    behaviour: str
    """The fake model's behaviour (its ``--model``), e.g. ``default``, ``agree``, ``never-agree``."""
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    policy_id: str
    """The policy id a scripted thought cites (the pack's first, or one not in the pack)."""

    @functools.cached_property
    def n(self) -> int:
        """A number derived from the messages: deterministic variety across prompts."""
        return int(hashlib.sha256(json.dumps(self.messages).encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class Step:
    """What a reply's state update sees: the node, the state before it, and the parsed reply."""

    stage: str
    """The node id (recorded with usage and errors)."""
    state: Mapping[str, Any]
    reply: dict[str, Any]
    """The validated reply, as a plain dict (``model_dump()``)."""
    round: int | None = None
    """The loop round, for an agent in a loop."""
    logprobs: list[dict[str, Any]] | None = None
    """Per token of the reply, ``{"token", "logprob", "top": [{"token", "logprob"}]}``, when the kind
    asked for them and the backend gave them."""

    @property
    def data(self) -> Mapping[str, Any]:
        """The state's free-form values written by kinds beyond the recipe's (see ``ReplyKind.writes``)."""
        return self.state.get("data") or {}


Update = Callable[[Step], dict[str, Any]]
Turn = Callable[[dict[str, Any]], dict[str, Any]]
SchemaHook = Callable[[dict[str, Any], list[str], Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ReplyKind:
    """The declaration of one reply kind. See the module docstring."""

    name: str
    model: type[BaseModel]
    """The reply as a Pydantic model (``extra="forbid"``): validated, and its JSON Schema sent."""
    inputs: frozenset[str] = frozenset()
    """Template variables a role of this kind may use, besides :data:`COMMON_INPUTS`."""
    reasoning: tuple[str, ...] = ()
    """Reply fields that hold the agent's reasoning: a string, a list of strings, or a list of
    thoughts (``{"text": ...}``). When every one of them is a refusal, the agent refused its job."""
    update: Update | None = None
    """For a role node, or an agent of a sequential loop: the partial state update a reply makes.
    Values of its own go under ``"data"`` (a dict merged into the state's, declared in
    :attr:`writes`); setting ``"stop_reason"`` ends the loop it stands in (one of :attr:`stops`)."""
    turn: Turn | None = None
    """For a loop agent: the turn a reply records. The loop reads ``agreed`` (the verdict),
    ``thoughts`` (new thoughts), ``superseded`` (``[{"index", "reason"}]``, earlier thoughts marked
    replaced) and ``response`` (``""`` keeps the current one); it decides from the turns whether to
    stop and merges the dissenting ones into the state. Other keys are recorded with the turn,
    except ``faults`` (``[{"kind", "detail"}]``), which go to the record's faults."""
    writes: frozenset[str] = frozenset()
    """Keys its update writes under ``"data"``: template variables for the roles after it."""
    stops: tuple[str, ...] = ()
    """Stop reasons its update may set to end the loop it stands in (e.g. ``violation``)."""
    logprobs: bool = False
    """Ask the backend for token log-probabilities (given to :attr:`update` as ``Step.logprobs``)."""
    refusal_check: bool = True
    """Whether a plain-text or all-refusal reply is an agent refusing its job (``agent_refusal``).
    False for a role whose refusal is an answer (the ear-whisperer's target)."""
    after: tuple[str, ...] = ()
    """Kinds whose node must come earlier in a graph's flow (a refiner needs a draft)."""
    once: bool = False
    """At most one node of a graph may have this kind (one draft)."""
    context: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    """Validation context taken from the state before the call (e.g. how many thoughts exist);
    passed to the model's validators and to :attr:`schema`."""
    schema: SchemaHook | None = None
    """Adjust the JSON Schema derived from :attr:`model`: ``(schema, policy_ids, context) -> schema``."""
    parse: Callable[[str], Any] | None = None
    """Turn the reply text into the result, raising ``ValueError`` saying what is wrong (default:
    JSON validated against :attr:`model`)."""
    partial: frozenset[str] = frozenset()
    """Fields of :attr:`model` a reply may leave empty: a reply valid but for these (missing, null
    or invalid) and for unknown keys (dropped) is accepted with them None, not repaired, and
    :attr:`aidsafe.structured.CallOutcome.empty` lists them. For a grader that may leave a score
    empty: the judge keeps the scores it can read and leaves the others unscored. The model's
    validators must take None there."""
    fake: Callable[[FakeRequest], Any] | None = None
    """The fake backend's scripted reply: a JSON-serialisable value (or a string sent as is)."""
    max_tokens: int = 1024
    """Default reply budget in tokens, sized for a Mixtral-class model; a graph role's
    ``max_tokens`` or ``--max-tokens`` overrides it."""
    options: tuple[tuple[str, Any], ...] = ()
    """Settings a graph role of this kind may give under ``params``, with their defaults: template
    variables, also passed to :attr:`model`'s validators and :attr:`schema` in the context."""
    description: str = ""

    @property
    def placement(self) -> Literal["step", "agent"] | None:
        """Where the kind may stand in a graph: a role node, a loop agent, or nowhere (e.g. the judge's)."""
        if self.turn is not None:
            return "agent"
        if self.update is not None:
            return "step"
        return None

    def provided_inputs(self) -> frozenset[str]:
        """Every variable a template of this kind may use."""
        return COMMON_INPUTS | self.inputs | {name for name, _ in self.options}


_KINDS: dict[str, ReplyKind] = {}


def register_kind(kind: ReplyKind, *, replace: bool = False) -> ReplyKind:
    """Register ``kind`` under its name; refuses a name taken (unless ``replace``), ``writes``
    that reuse the graph's own variable names, or ``partial`` fields its model lacks. Returns ``kind``. (Whether a graph provides the
    kind's ``inputs`` is checked where a graph file uses it, naming the file and line.)"""
    if not kind.name.isidentifier():
        raise ValueError(f"reply kind name {kind.name!r} must be an identifier")
    if kind.name in _KINDS and not replace and _KINDS[kind.name] is not kind:
        raise ValueError(f"reply kind {kind.name!r} is already registered")
    if kind.update is not None and kind.turn is not None:
        raise ValueError(f"reply kind {kind.name!r}: give 'update' (a role node) or 'turn' (a loop agent), not both")
    unknown = kind.partial - set(kind.model.model_fields)
    if unknown:
        raise ValueError(f"reply kind {kind.name!r}: 'partial' names {', '.join(sorted(unknown))}, not fields of {kind.model.__name__}")
    clash = kind.writes & (COMMON_INPUTS | AGENT_INPUTS | {"data"})
    if clash:
        raise ValueError(f"reply kind {kind.name!r}: 'writes' may not reuse the graph's own names {', '.join(sorted(clash))}")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove a registered kind (tests use it to clean up after themselves)."""
    _KINDS.pop(name, None)


def get_kind(name: str | ReplyKind) -> ReplyKind:
    """The registered kind of that name; ``KeyError`` listing the registered kinds if none."""
    if isinstance(name, ReplyKind):
        return name
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown reply kind {name!r}; registered: {', '.join(kind_names())}") from None


def kind_names(placement: Literal["step", "agent", "graph"] | None = None) -> list[str]:
    """Registered kind names, in registration order; ``graph``: those a graph may use."""
    kinds = _KINDS.values()
    if placement == "graph":
        return [k.name for k in kinds if k.placement is not None]
    if placement is not None:
        return [k.name for k in kinds if k.placement == placement]
    return [k.name for k in kinds]
