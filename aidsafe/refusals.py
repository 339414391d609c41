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

from .kinds import ReplyKind, get_kind

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


def _texts(value: Any) -> list[str]:
    """The text of a reasoning field: a string, a list of strings, a list of thoughts
    (``{"text": ...}``), or an object of strings (a critique)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str)]
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(item["text"])
        return out
    return []


def refuses_to_reason(kind: str | ReplyKind, reply: dict[str, Any]) -> bool:
    """Whether every reasoning field of a parsed reply (the kind's ``reasoning``) is a refusal,
    and there is at least one."""
    texts = [t for field in get_kind(kind).reasoning for t in _texts(reply.get(field)) if t.strip()]
    return bool(texts) and all(is_refusal(t) for t in texts)
