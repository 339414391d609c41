"""What ``aidsafe pairs`` writes: one preference record per prompt."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..records import CitedThought, PolicySetRef, RunError, Usage, WrittenBy

__all__ = ["PairRecord", "Side", "Try", "Verdict"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Side(_Out):
    """One side of a pair: a chain of thought and a response."""

    thoughts: list[CitedThought]
    response: str


class Verdict(_Out):
    """The safety scorer's verdict on one side."""

    verdict: Literal["safe", "unsafe"]
    violated: list[str] = Field(default_factory=list)
    p_unsafe: float | None = None
    """Probability of ``unsafe`` from the scorer's token log-probabilities (None where the server gives none)."""


class Try(Verdict):
    """One round of the ear-whisperer: the belief, the target's answer, the scorer's verdict."""

    round: int
    belief: str
    thoughts: list[CitedThought]
    response: str


class PairRecord(_Out):
    """A DPO preference pair for one prompt, or why the prompt yielded none."""

    id: str
    prompt: str
    prompt_sha256: str | None = None
    """:func:`~aidsafe.records.prompt_sha256` of ``prompt`` (None in pairs that predate it)."""
    policy_set: PolicySetRef
    status: Literal["ok", "no_pair", "failed"]
    """``ok``: a pair; ``no_pair``: the prompt yielded none (see ``reason``); ``failed``: a model call failed (see ``error``)."""
    chosen: Side | None = None
    """The policy-faithful side: the generation record's refined chain of thought and response."""
    chosen_verdict: Verdict | None = None
    """The scorer's verdict on the chosen side (a pair whose chosen side is unsafe is flagged)."""
    rejected: Side | None = None
    """The target's answer that the scorer found violating, with the belief in front of it."""
    belief: str | None = None
    """The belief that led to the rejected side."""
    tries: list[Try] = Field(default_factory=list)
    """Every round of the ear-whisperer, in order."""
    stop_reason: str
    """``violation`` (a pair), ``budget`` (no belief worked), ``skipped`` (the input record was
    unusable), ``error`` or ``agent_refusal``."""
    reason: str | None = None
    """Why there is no pair, in words."""
    flags: list[str] = Field(default_factory=list)
    """Doubts about the pair: ``chosen_unsafe`` (the scorer found the chosen side unsafe too);
    the judge adds ``rejected_not_worse``. Flagged pairs are left out of the DPO export by default."""
    source: dict[str, Any] = Field(default_factory=dict)
    """Where the chosen side came from: the generation file and its record's graph."""
    models: dict[str, str] = Field(default_factory=dict)
    usage: dict[str, Usage] = Field(default_factory=dict)
    error: RunError | None = None
    written_by: WrittenBy | None = None
    """The job and configuration (digest) that wrote the record (:class:`~aidsafe.records.WrittenBy`);
    None in records that predate it."""
