"""The output record: one JSON line per input prompt, ``ok`` or ``failed``, never dropped."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "RECORD_FORMAT",
    "CitedThought",
    "Critique",
    "Fault",
    "Intents",
    "Origin",
    "PolicySetRef",
    "Record",
    "RemovedThought",
    "RunError",
    "Seed",
    "Superseded",
    "SupersededRef",
    "Turn",
    "Usage",
    "WrittenBy",
    "config_sha256",
    "prompt_sha256",
    "training_thoughts",
]


RECORD_FORMAT = 1
"""The version of the record file format that a record's ``written_by.format`` names (records
without ``written_by`` were written before it: format 0)."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WrittenBy(BaseModel):
    """What wrote a record: its file's identity, carried by every record a file job writes (an
    optional field, so that a line stays one self-contained record and older files, without it,
    stay readable). A resume, ``aidsafe merge`` and the jobs reading a file check it, even where
    the summary sidecar is lost."""

    model_config = ConfigDict(extra="allow")
    """A later format may add keys: an older reader keeps them and reads on."""

    format: int
    """:data:`RECORD_FORMAT` of the aidsafe that wrote the record."""
    job: str
    """The file job: ``generate``, ``judge``, ``judge-pairs``, ``pairwise``, ``pairs``."""
    config: str
    """:func:`config_sha256` of the job's configuration: the ``config`` its summary sidecar
    remembers (graph, policy pack, templates, models, sampling, ...). One output, one digest."""
    inputs: list[str] = Field(default_factory=list)
    """The ``written_by.config`` of the records this one was made from (a judged record: its
    generated record's; a pairwise verdict: both sides'), empty for prompts or older records."""


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
    truncated: int = 0
    """Replies cut off at the token budget (``finish_reason == "length"``)."""


class Superseded(_Out):
    """A mark on a thought that a later reviewer found wrong and replaced."""

    by: str
    """The agent that marked it."""
    round: int
    reason: str


class CitedThought(_Out):
    """A thought with the ids of the policies it applies, and where it came from."""

    text: str
    policies: list[str] = Field(default_factory=list)
    by: str | None = None
    """``seed`` (the first draft) or the agent that wrote it; None in records that predate provenance."""
    round: int | None = None
    """The deliberation round it was written in (0 for the seed)."""
    superseded: Superseded | None = None
    """Set when a later reviewer marked it wrong."""


class RemovedThought(CitedThought):
    """A thought the refiner removed, and why."""

    reason: Literal["repetitive", "redundant", "deceptive", "policy_inconsistent", "superseded"]
    """The refiner's reason, or ``superseded``: a thought a reviewer replaced, which the refiner
    kept and which is removed anyway (it never reaches training data)."""


class Intents(_Out):
    """Intent decomposition of the prompt (empty for graphs without an intent stage)."""

    explicit: list[str] = Field(default_factory=list)
    implicit: list[str] = Field(default_factory=list)


class Critique(_Out):
    """A reviewer's critique, written before its verdict."""

    intents: str
    policies: str
    flaws: str
    refusal: str


class SupersededRef(_Out):
    """A thought a reviewer marked as replaced: its number in the list it was shown (which only grows)."""

    index: int
    reason: str


class Turn(_Out):
    """One deliberation turn of one agent."""

    round: int
    agent: str
    model: str
    """``backend:model`` that answered."""
    critique: Critique | None = None
    """The review written before the verdict (None in records that predate critiques)."""
    agreed: bool
    superseded: list[SupersededRef] = Field(default_factory=list)
    """Earlier thoughts this agent marked as replaced (empty when it agreed)."""
    thoughts: list[CitedThought]
    """Thoughts this agent added (empty when it agreed)."""
    response: str
    """The response this agent proposed (empty when it agreed or kept the current one)."""
    outvoted: bool = False
    """A round-table agent that disagreed in the round the majority agreed (its turn reaches the
    refiner with ``minority: keep``)."""
    usage: Usage


class Seed(_Out):
    """The first draft: the initializer's thoughts and response, before any deliberation."""

    thoughts: list[CitedThought]
    response: str


class Origin(_Out):
    """Where an imported record came from (``aidsafe import``)."""

    file: str
    row: int
    """1-based data row of the file."""
    columns: dict[str, str] = Field(default_factory=dict)
    """The row's other columns, verbatim (e.g. the released data's ``deliberation_log``)."""


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
    kind: Literal["model_error", "invalid_reply", "agent_refusal", "graph_error", "worker_crash"] = "model_error"
    """``model_error``: the call failed after its retries; ``invalid_reply``: the reply did not
    validate, even after the repair call; ``agent_refusal``: the agent refused to do its job;
    ``worker_crash``: the process running the prompt died with it, again and again (``--engine ray``)."""
    message: str
    raw: str | None = None


class Record(_Out):
    """One line of the output JSONL."""

    id: str
    """The input id: the file's id field, else the record's 1-based number in the file (see
    :func:`aidsafe.inputs.default_id`)."""
    prompt: str
    """The user prompt, verbatim."""
    prompt_sha256: str | None = None
    """:func:`prompt_sha256` of ``prompt``: paired operations (compare, judge --against, merge,
    resume) check it before pairing records by id. None in records that predate it."""
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
    seed: Seed | None = None
    """The first draft, before deliberation (kept for a failed prompt too; None for graphs without a
    draft, prompts that failed before it, and records that predate it)."""
    response_before_refiner: str | None = None
    """The response the refiner was given: the deliberation's last (None for graphs without a refiner)."""
    refiner_rewrote_response: bool | None = None
    """True when the refiner wrote the final ``response`` (a graph whose refiner has
    ``params: {rewrite_response: true}``), so it differs from ``response_before_refiner``; False
    when the final response is the deliberation's; None for graphs without a refiner and older records."""
    models: dict[str, str]
    """``backend:model`` per role and per agent."""
    usage: dict[str, Usage]
    """Tokens per stage (node id)."""
    status: Literal["ok", "failed"]
    error: RunError | None = None
    faults: list[Fault] = Field(default_factory=list)
    origin: Origin | None = None
    """For records read from another dataset: the file and row."""
    written_by: WrittenBy | None = None
    """The job and configuration (digest) that wrote the record; None outside a file job and in
    records that predate it."""


def training_thoughts(thoughts: list[CitedThought]) -> list[CitedThought]:
    """The thoughts that may reach training data: every one a reviewer superseded is left out.

    The refiner already removes them from records written since superseded thoughts are removed
    whatever it decides; this keeps older records (and imported or hand-edited ones) from carrying
    one into an SFT, DPO or CSV export. Exports count what it leaves out."""
    return [t for t in thoughts if t.superseded is None]


def prompt_sha256(prompt: str) -> str:
    """The SHA-256 of a prompt's UTF-8 text, as 64 hex digits: what a record's ``prompt_sha256``
    holds (``printf '%s' "$PROMPT" | sha256sum`` gives the same). The one place it is computed."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def config_sha256(config: Mapping[str, Any]) -> str:
    """The SHA-256 of a job's configuration as canonical JSON (keys sorted, no spaces, UTF-8), as
    64 hex digits: what ``written_by.config`` holds. The configuration a summary sidecar
    remembers (JSON) gives the same digest as the one it was written from."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
