"""Reply kinds: what each role answers, declared once (see :mod:`aidsafe.kinds._registry`).

The recipe's kinds (``intents``, ``draft``, ``deliberation``, ``refinement``) and the
ear-whisperer's (``belief``, ``whispered``, ``safety_verdict``) are registered on import; the
judge registers its own (``scores``, ``pairwise``) from :mod:`aidsafe.judge`. A new
role is one :func:`register_kind` call plus a template::

    from aidsafe.kinds import ReplyKind, register_kind

    register_kind(ReplyKind(name="summary", model=Summary, inputs=frozenset({"thoughts"}),
                            update=lambda step: {"response": step.reply["text"]},
                            fake=lambda req: {"text": "a summary"}))
"""

from __future__ import annotations

from ._registry import (
    AGENT_INPUTS,
    COMMON_INPUTS,
    STEP_INPUTS,
    FakeRequest,
    ReplyKind,
    Step,
    get_kind,
    kind_names,
    register_kind,
    unregister_kind,
)
from ._schema import reply_schema
from .generation import DeliberationReply, Draft, Intents, Refinement, Removal, RemovalReason, Thought
from .whisper import BeliefReply, SafetyVerdict, p_unsafe

__all__ = [
    "AGENT_INPUTS",
    "COMMON_INPUTS",
    "STEP_INPUTS",
    "BeliefReply",
    "DeliberationReply",
    "Draft",
    "FakeRequest",
    "Intents",
    "Refinement",
    "Removal",
    "RemovalReason",
    "ReplyKind",
    "SafetyVerdict",
    "Step",
    "Thought",
    "get_kind",
    "kind_names",
    "p_unsafe",
    "register_kind",
    "reply_schema",
    "unregister_kind",
]
