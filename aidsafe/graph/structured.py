"""One structured model call: send the schema, validate the reply, repair once, else fail with the raw reply."""

from __future__ import annotations

import json
from collections.abc import Callable
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ..cache import ResponseCache, request_key
from ..errors import ModelCallError
from ..models.base import ChatModel, Completion
from ..refusals import is_refusal, refuses_to_reason
from ..replies import REPLY_MODELS

__all__ = ["CallOutcome", "call_structured", "complete_cached", "parse_reply"]

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
    faults: list[dict[str, Any]] = field(default_factory=list)

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


def parse_reply(kind: str, text: str, context: dict[str, Any] | None = None) -> BaseModel:
    """Parse ``text`` as the JSON reply of ``kind``; tolerates a Markdown code fence.

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
        return REPLY_MODELS[kind].model_validate(data, context=context)
    except ValidationError as exc:
        raise ValueError(_short(exc)) from None
    except RecursionError:
        raise ValueError("reply nested too deeply") from None


async def complete_cached(
    model: ChatModel, messages: list[dict[str, str]], kind: str, schema: dict[str, Any], cache: ResponseCache | None
) -> Completion:
    """One model call, answered from ``cache`` when the same request was answered before."""
    if cache is None:
        return await model.complete(messages, schema=schema, schema_name=kind)
    key = request_key(model.settings, messages, schema)
    hit = cache.get(key)
    if hit is not None:
        return hit
    completion = await model.complete(messages, schema=schema, schema_name=kind)
    cache.put(key, completion)
    return completion


async def call_structured(
    model: ChatModel,
    messages: list[dict[str, str]],
    *,
    kind: str,
    schema: dict[str, Any],
    context: dict[str, Any] | None = None,
    cache: ResponseCache | None = None,
    parse: Callable[[str], Any] | None = None,
) -> CallOutcome:
    """Call ``model``; on an invalid reply, make one repair call with the error fed back.

    With a ``cache``, a request answered before (e.g. by a run that was killed) is answered from
    it, and every new reply is stored as it arrives. ``parse`` (default: :func:`parse_reply` for
    ``kind``) turns the reply text into the result or raises ``ValueError`` saying what is wrong.
    """
    outcome = CallOutcome(reply=None, raw="")
    convo = list(messages)
    for attempt in (1, 2):
        try:
            completion = await complete_cached(model, convo, kind, schema, cache)
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
            reply = parse(completion.text) if parse is not None else parse_reply(kind, completion.text, context)
        except ValueError as exc:
            if is_refusal(completion.text):  # no repair: refusing is not a format problem
                outcome.error, outcome.error_kind = f"the {kind} agent refused to do its job", "agent_refusal"
                return outcome
            problem = str(exc)
            if completion.finish_reason == "length":
                problem += " (the reply was cut off at the max_tokens limit)"
            outcome.error = f"invalid {kind} reply after {attempt} attempt(s): {problem}"
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
        if isinstance(reply, BaseModel) and refuses_to_reason(kind, reply.model_dump()):
            outcome.error, outcome.error_kind = f"the {kind} agent refused to reason (every reasoning field is a refusal)", "agent_refusal"
            return outcome
        outcome.reply, outcome.error, outcome.error_kind = reply, None, None
        return outcome
    return outcome
