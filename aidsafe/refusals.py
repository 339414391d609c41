"""Detect an agent refusing to do its job (not the same as a safe refusal in the *response*).

Heavily guarded models may refuse to reason about a harmful prompt at all: a plain-text "I'm
sorry, I can't help with that" instead of JSON, or JSON whose reasoning fields (intents,
thoughts) are refusals. The paper names this failure; aidsafe records it as its own stop
reason, ``agent_refusal``. A refusal in the ``response`` field is the assistant's answer to
the user and is fine.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["is_refusal", "refuses_to_reason"]

_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e"
    r"|i (?:can(?:'|no)?t|cannot|won'?t|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r" (?:help|assist|comply|provide|do that|engage|support|fulfil|fulfill|answer|discuss|participate)"
    r"|as an ai(?: language model)?,? i)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """Whether ``text`` opens like a refusal."""
    return bool(_REFUSAL.match(text.strip()))


def _reasoning_texts(kind: str, reply: dict[str, Any]) -> list[str]:
    if kind == "intents":
        return [*reply.get("explicit", []), *reply.get("implicit", [])]
    if kind in ("draft", "deliberation"):
        return [t.get("text", "") for t in reply.get("thoughts", [])]
    return []


def refuses_to_reason(kind: str, reply: dict[str, Any]) -> bool:
    """Whether every reasoning field of a parsed reply is a refusal (and there is at least one)."""
    texts = [t for t in _reasoning_texts(kind, reply) if t.strip()]
    return bool(texts) and all(is_refusal(t) for t in texts)
