"""A structured reply from a model: send the schema, validate the reply, repair once, else fail with the raw reply.

Used by the graph's nodes and by the judge alike. What a reply must look like, how it is parsed
and which of its fields hold reasoning come from its reply kind (:mod:`aidsafe.kinds`). Caching
is not done here: a model wrapped in :class:`~aidsafe.models.cache.CachedChatModel` answers a
request it has seen from its cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ModelCallError
from .kinds import ReplyKind, get_kind
from .models.base import ChatModel
from .refusals import is_refusal, refuses_to_reason

__all__ = ["CallOutcome", "call_structured", "parse_reply"]

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@dataclass
class CallOutcome:
    """What one role call produced: a validated reply, or an error with the raw text kept."""

    reply: Any
    """The parsed reply (a reply model, or what a custom ``parse`` returned); None on failure."""
    raw: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    retries: int = 0
    cached: int = 0
    error: str | None = None
    error_kind: str | None = None
    """``model_error`` (the call failed), ``invalid_reply`` or ``agent_refusal``."""

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "calls": self.attempts,
            "retries": self.retries,
            "cached": self.cached,
        }


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(reply)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_reply(kind: str | ReplyKind, text: str, context: Mapping[str, Any] | None = None) -> BaseModel:
    """Parse ``text`` as the JSON reply of ``kind`` (validated against its model); tolerates a Markdown code fence.

    Raises ``ValueError`` with a short, model-readable description of what is wrong.
    """
    match = _FENCE.match(text)
    body = match.group(1) if match else text.strip()
    try:
        data = json.loads(body, strict=False)  # llama.cpp grammars allow raw newlines inside strings
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    try:
        return get_kind(kind).model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ValueError(_short(exc)) from None
    except RecursionError:
        raise ValueError("reply nested too deeply") from None


async def call_structured(
    model: ChatModel,
    messages: list[dict[str, str]],
    *,
    kind: str | ReplyKind,
    schema: dict[str, Any],
    context: Mapping[str, Any] | None = None,
) -> CallOutcome:
    """Call ``model``; on an invalid reply, make one repair call with the error fed back.

    The reply is parsed by the kind's ``parse`` hook, else validated against its model with the
    validation ``context``. A reply whose reasoning fields are all refusals (or plain text that
    opens like one) ends the call as ``agent_refusal``, without a repair.
    """
    spec = get_kind(kind)
    name = spec.name
    outcome = CallOutcome(reply=None, raw="")
    convo = list(messages)
    for attempt in (1, 2):
        try:
            completion = await model.complete(convo, schema=schema, schema_name=name)
        except ModelCallError as exc:
            outcome.error, outcome.error_kind = str(exc), "model_error"
            return outcome
        outcome.retries += completion.retries
        outcome.cached += int(completion.cached)
        outcome.attempts = attempt
        outcome.raw = completion.text
        outcome.prompt_tokens += completion.prompt_tokens
        outcome.completion_tokens += completion.completion_tokens
        try:
            reply = spec.parse(completion.text) if spec.parse is not None else parse_reply(spec, completion.text, context)
        except ValueError as exc:
            if is_refusal(completion.text):  # no repair: refusing is not a format problem
                outcome.error, outcome.error_kind = f"the {name} agent refused to do its job", "agent_refusal"
                return outcome
            problem = str(exc)
            if completion.finish_reason == "length":
                problem += " (the reply was cut off at the max_tokens limit)"
            outcome.error = f"invalid {name} reply after {attempt} attempt(s): {problem}"
            outcome.error_kind = "invalid_reply"
            convo = [
                *messages,
                {"role": "assistant", "content": completion.text},
                {
                    "role": "user",
                    "content": f"Your reply was not valid: {problem}. Reply again with JSON only, matching this JSON Schema: "
                    + json.dumps(schema, separators=(",", ":")),
                },
            ]
            continue
        if isinstance(reply, BaseModel) and refuses_to_reason(spec, reply.model_dump()):
            outcome.error, outcome.error_kind = f"the {name} agent refused to reason (every reasoning field is a refusal)", "agent_refusal"
            return outcome
        outcome.reply, outcome.error, outcome.error_kind = reply, None, None
        return outcome
    return outcome
