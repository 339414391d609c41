"""The output record: one JSON line per input prompt, ``ok`` or ``failed``, never dropped."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CitedThought", "Fault", "Intents", "PolicySetRef", "Record", "RemovedThought", "RunError", "Turn", "Usage"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Out):
    """Token counts as reported by the backend."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    """Replies used (a repair attempt counts as a call)."""
    retries: int = 0
    """Failed attempts retried (429, 5xx, timeouts, dropped connections)."""
    cached: int = 0
    """Replies answered from the response cache (paid for by an earlier, interrupted run)."""


class CitedThought(_Out):
    """A thought with the ids of the policies it applies."""

    text: str
    policies: list[str] = Field(default_factory=list)


class RemovedThought(CitedThought):
    """A thought the refiner removed, and why."""

    reason: Literal["repetitive", "redundant", "deceptive", "policy_inconsistent"]


class Intents(_Out):
    """Intent decomposition of the prompt (empty for graphs without an intent stage)."""

    explicit: list[str] = Field(default_factory=list)
    implicit: list[str] = Field(default_factory=list)


class Turn(_Out):
    """One deliberation turn of one agent."""

    round: int
    agent: str
    model: str
    """``backend:model`` that answered."""
    agreed: bool
    thoughts: list[CitedThought]
    """Thoughts this agent added or corrected (empty when it agreed)."""
    response: str
    """The response this agent proposed (empty when it agreed)."""
    usage: Usage


class PolicySetRef(_Out):
    name: str
    version: str


class Fault(_Out):
    """A problem that did not fail the prompt (e.g. a thought citing an unknown policy id)."""

    stage: str
    kind: str
    detail: str


class RunError(_Out):
    """Why a prompt failed, with the raw reply kept for inspection."""

    stage: str
    """The node (or ``loop/agent``) that failed; ``graph`` for an unexpected error."""
    kind: Literal["model_error", "invalid_reply", "agent_refusal", "graph_error"] = "model_error"
    """``model_error``: the call failed after its retries; ``invalid_reply``: the reply did not
    validate, even after the repair call; ``agent_refusal``: the agent refused to do its job."""
    message: str
    raw: str | None = None


class Record(_Out):
    """One line of the output JSONL."""

    id: str
    """The input id (from the file, or its line/row number)."""
    prompt: str
    """The user prompt, verbatim."""
    graph: str
    """Name of the graph that produced the record."""
    policy_set: PolicySetRef
    intents: Intents
    deliberation: list[Turn]
    """Every deliberation turn, in order."""
    stop_reason: str
    """``consensus``, ``budget``, ``no_loop`` (graphs without deliberation); for a failed prompt
    ``agent_refusal`` or ``error`` (see ``error``)."""
    rounds: int
    """Deliberation rounds run (0 without a loop)."""
    thoughts: list[CitedThought]
    """The final chain of thought (after the refiner, if the graph has one)."""
    removed_thoughts: list[RemovedThought]
    response: str
    """The final response."""
    models: dict[str, str]
    """``backend:model`` per role and per agent."""
    usage: dict[str, Usage]
    """Tokens per stage (node id)."""
    status: Literal["ok", "failed"]
    error: RunError | None = None
    faults: list[Fault] = Field(default_factory=list)
