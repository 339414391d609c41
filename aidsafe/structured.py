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
from .templates import MIN_COPY, RoleTemplate, normalize, word_runs, words

__all__ = ["CallOutcome", "call_structured", "copied_instruction", "parse_reply"]

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
    truncated: int = 0
    """Replies cut off at the token budget (``finish_reason == "length"``)."""
    logprobs: list[dict[str, Any]] | None = None
    """Token log-probabilities of the last reply, when the kind asked and the backend gave them."""
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
            "truncated": self.truncated,
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


def copied_instruction(reply: Any, template: RoleTemplate | None, data: str = "") -> tuple[str, str] | None:
    """The first string of ``reply`` that copies the template's own text instead of answering:
    ``(field path, text)``, or None.

    A string copies when it is a piece of one template line of at least
    :data:`~aidsafe.templates.MIN_COPY` characters (a placeholder or an instruction echoed as
    content), or holds a run of :data:`~aidsafe.templates.COPY_WORDS` words of one template
    line. User data (the prompt, policies, earlier thoughts) is not template text, so quoting it
    is not copying: what also stands in ``data`` (the user's prompt) does not count.
    """
    if template is None:
        return None
    quoted = normalize(data)
    allowed = word_runs(words(data)) if data else set()

    def copies(text: str) -> bool:
        norm = normalize(text)
        if len(norm) >= MIN_COPY and norm not in quoted and any(norm in line for line in template.instructions):
            return True
        return bool(template.runs) and not (word_runs(words(text)) - allowed).isdisjoint(template.runs)

    def walk(value: Any, path: str) -> tuple[str, str] | None:
        if isinstance(value, str):
            return (path, value) if copies(value) else None
        if isinstance(value, dict):
            for key, inner in value.items():
                found = walk(inner, f"{path}.{key}" if path else str(key))
                if found:
                    return found
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                found = walk(inner, f"{path}[{index}]")
                if found:
                    return found
        return None

    return walk(reply, "")


async def call_structured(
    model: ChatModel,
    messages: list[dict[str, str]],
    *,
    kind: str | ReplyKind,
    schema: dict[str, Any],
    context: Mapping[str, Any] | None = None,
    template: RoleTemplate | None = None,
    data: str = "",
) -> CallOutcome:
    """Call ``model``; on an invalid reply, make one repair call with the error fed back.

    The reply is parsed by the kind's ``parse`` hook, else validated against its model with the
    validation ``context``. A reply whose reasoning fields are all refusals (or plain text that
    opens like one) ends the call as ``agent_refusal``, without a repair. A reply that copies the
    ``template``'s own text as content (:func:`copied_instruction`; the user's ``data`` may be
    quoted) is invalid, like one that fails the schema.
    """
    spec = get_kind(kind)
    name = spec.name
    outcome = CallOutcome(reply=None, raw="")
    convo = list(messages)
    options: dict[str, Any] = {"logprobs": True} if spec.logprobs else {}
    for attempt in (1, 2):
        try:
            completion = await model.complete(convo, schema=schema, schema_name=name, **options)
        except ModelCallError as exc:
            outcome.error, outcome.error_kind = str(exc), "model_error"
            return outcome
        outcome.retries += completion.retries
        outcome.cached += int(completion.cached)
        outcome.truncated += int(completion.finish_reason == "length")
        outcome.attempts = attempt
        outcome.raw = completion.text
        outcome.logprobs = completion.logprobs
        outcome.prompt_tokens += completion.prompt_tokens
        outcome.completion_tokens += completion.completion_tokens
        try:
            reply = spec.parse(completion.text) if spec.parse is not None else parse_reply(spec, completion.text, context)
        except ValueError as exc:
            if spec.refusal_check and is_refusal(completion.text):  # no repair: refusing is not a format problem
                outcome.error, outcome.error_kind = f"the {name} agent refused to do its job", "agent_refusal"
                return outcome
            problem = str(exc)
            if completion.finish_reason == "length":
                problem += " (the reply was cut off at the max_tokens limit)"
        else:
            dumped = reply.model_dump() if isinstance(reply, BaseModel) else reply
            if isinstance(reply, BaseModel) and spec.refusal_check and refuses_to_reason(spec, dumped):
                outcome.error, outcome.error_kind = f"the {name} agent refused to reason (every reasoning field is a refusal)", "agent_refusal"
                return outcome
            copied = copied_instruction(dumped, template, data)
            if copied is None:
                outcome.reply, outcome.error, outcome.error_kind = reply, None, None
                return outcome
            problem = f"{copied[0]} copies the instructions ({copied[1][:120]!r}) instead of answering; write your own content"
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
    return outcome
