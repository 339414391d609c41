"""A structured reply from a model: send the schema, validate the reply, repair once, else fail with the raw reply.

The one path for every structured reply: the graph's nodes, the judge, the ear-whisperer's
scorer and the evaluation graders (through :class:`aidsafe.evals.adapter.InspectChatModel`, an
inspect model seen as a :class:`~aidsafe.models.base.ChatModel`). What a reply must look like,
how it is parsed, which of its fields may be left empty (``partial``) and which hold reasoning
come from its reply kind (:mod:`aidsafe.kinds`); the JSON is taken out of the reply text by
:func:`extract_json`, the one extractor. Caching is not done here: a model wrapped in
:class:`~aidsafe.models.cache.CachedChatModel` answers a request it has seen from its cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError, create_model
from pydantic.fields import FieldInfo

from .errors import ModelCallError
from .kinds import ReplyKind, get_kind
from .models.base import ChatModel
from .refusals import is_refusal, refuses_to_reason
from .templates import MIN_COPY, RoleTemplate, normalize, word_runs, words

__all__ = ["CallOutcome", "call_structured", "copied_instruction", "empty_fields", "extract_json", "parse_reply", "validate_reply"]

_FENCED = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
"""A Markdown code block (```json or a bare ```), anywhere in the reply: its body."""
_OPENING_FENCE = re.compile(r"\A```[ \t]*(?:json|JSON)?[ \t]*\n?")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[{}]', re.DOTALL)
"""What matters when matching braces: a JSON string (an unclosed one runs to the end), a brace."""


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
    problem: str | None = None
    """What was wrong with the last invalid reply, in the words fed back to the model (no prefix)."""
    invalid_raw: str | None = None
    """The raw text of the last reply found invalid: the first one, when its repair was accepted;
    None when the first reply was."""
    empty: tuple[str, ...] = ()
    """Fields the accepted reply left empty (None): only a kind with ``partial`` fields accepts one."""

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


def _loads(text: str) -> Any:
    """``json.loads`` (raw newlines inside strings allowed, as llama.cpp grammars write them);
    ``ValueError`` with a short description otherwise."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ValueError(f"not valid JSON ({exc})") from None


def _objects(text: str) -> list[tuple[int, int]]:
    """The spans of the outermost balanced ``{...}`` of ``text``, in order. Braces inside JSON
    strings do not count; a ``{`` never closed ends the search (all that follows is inside it)."""
    spans: list[tuple[int, int]] = []
    start = text.find("{")
    while start >= 0:
        depth, end = 0, -1
        for token in _TOKEN.finditer(text, start):
            if token.group() == "{":
                depth += 1
            elif token.group() == "}":
                depth -= 1
                if depth == 0:
                    end = token.end()
                    break
        if end < 0:
            break
        spans.append((start, end))
        start = text.find("{", end)
    return spans


def extract_json(text: str) -> Any:
    """The JSON value of a reply: the whole text; else the body of its first Markdown code block
    (```json or ```; one left open by a cut reply runs to the end); else the first outermost
    balanced ``{...}`` that parses, in prose around it or followed by more text (braces inside
    strings do not count; an object is never taken from inside a larger one that fails).

    The one JSON extractor of aidsafe: every structured reply goes through it. Raises
    ``ValueError`` with a short, model-readable description: what is wrong with the most
    specific candidate tried (the first object, else the code block, else the whole text).
    """
    body = text.strip()
    try:
        return _loads(body)
    except ValueError as exc:
        problem = exc
    fence = _FENCED.search(body)
    block = fence.group(1).strip() if fence else _OPENING_FENCE.sub("", body).strip() if body.startswith("```") else None
    if block is not None:
        try:
            return _loads(block)
        except ValueError as exc:
            problem = exc
    first: ValueError | None = None
    for start, end in _objects(body):
        try:
            return _loads(body[start:end])
        except ValueError as exc:
            first = first or exc
    raise first or problem


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(reply)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


_PARTIAL: dict[tuple[type[BaseModel], frozenset[str]], type[BaseModel]] = {}


def _partial_model(spec: ReplyKind) -> type[BaseModel]:
    """The kind's model with its ``partial`` fields optional (None by default), constraints kept."""
    key = (spec.model, spec.partial)
    model = _PARTIAL.get(key)
    if model is None:
        fields: dict[str, Any] = {}
        for name in sorted(spec.partial):
            info = spec.model.model_fields[name]
            annotation: Any = info.annotation
            fields[name] = (annotation | None, FieldInfo.merge_field_infos(info, default=None))
        model = _PARTIAL[key] = create_model(f"{spec.model.__name__}Partial", __base__=spec.model, **fields)
    return model


def _lenient(spec: ReplyKind, data: Any, exc: ValidationError) -> dict[str, Any] | None:
    """``data`` without what a partial reply may get wrong (its ``partial`` fields in error, unknown
    keys), when nothing else is wrong; else None."""
    if not spec.partial or not isinstance(data, dict):
        return None
    drop: set[Any] = set()
    for err in exc.errors():
        loc = err["loc"]
        if not loc or not (loc[0] in spec.partial or (err["type"] == "extra_forbidden" and len(loc) == 1)):
            return None
        drop.add(loc[0])
    return {k: v for k, v in data.items() if k not in drop}


def validate_reply(kind: str | ReplyKind, data: Any, context: Mapping[str, Any] | None = None) -> BaseModel:
    """Validate the JSON value ``data`` as a reply of ``kind`` (with the validation ``context``).

    A kind with ``partial`` fields accepts a reply that is valid but for those (missing, null or
    invalid: each is then None; see :func:`empty_fields`) and for unknown keys (dropped). Raises
    ``ValueError`` with a short, model-readable description of what is wrong.
    """
    spec = get_kind(kind)
    try:
        return spec.model.model_validate(data, context=context)
    except ValidationError as exc:
        kept = _lenient(spec, data, exc)
        if kept is not None:
            try:
                return _partial_model(spec).model_validate(kept, context=context)
            except ValidationError:
                pass
        raise ValueError(_short(exc)) from None
    except RecursionError:
        raise ValueError("reply nested too deeply") from None


def empty_fields(kind: str | ReplyKind, reply: Any) -> tuple[str, ...]:
    """The ``partial`` fields of ``kind`` that ``reply`` left empty (None), in the model's order."""
    spec = get_kind(kind)
    if not spec.partial or not isinstance(reply, BaseModel):
        return ()
    return tuple(name for name in spec.model.model_fields if name in spec.partial and getattr(reply, name, None) is None)


def parse_reply(kind: str | ReplyKind, text: str, context: Mapping[str, Any] | None = None) -> BaseModel:
    """Parse ``text`` as the JSON reply of ``kind``: the JSON taken out by :func:`extract_json`
    (a Markdown code block, prose around the object tolerated), then :func:`validate_reply`.

    Raises ``ValueError`` with a short, model-readable description of what is wrong.
    """
    return validate_reply(kind, extract_json(text), context)


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

    The reply is parsed by the kind's ``parse`` hook, else by :func:`parse_reply` (the JSON taken
    out of the text, validated against the kind's model with the validation ``context``; a kind's
    ``partial`` fields may be left empty, listed in :attr:`CallOutcome.empty`). The schema travels
    as the model sends schemas (a backend's structured-output mode). A reply whose reasoning
    fields are all refusals (or plain text that opens like one) ends the call as
    ``agent_refusal``, without a repair (unless the kind's ``refusal_check`` is off). A reply that
    copies the ``template``'s own text as content (:func:`copied_instruction`; the user's
    ``data`` may be quoted) is invalid, like one that fails the schema.
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
                outcome.reply, outcome.error, outcome.error_kind, outcome.problem = reply, None, None, None
                outcome.empty = empty_fields(spec, reply)
                return outcome
            problem = f"{copied[0]} copies the instructions ({copied[1][:120]!r}) instead of answering; write your own content"
        outcome.error = f"invalid {name} reply after {attempt} attempt(s): {problem}"
        outcome.error_kind, outcome.problem, outcome.invalid_raw = "invalid_reply", problem, completion.text
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
