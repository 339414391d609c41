"""Property-based tests: the reply parser, one structured call, and the input readers never crash.

"Never crash" means: every input either gives a result of the promised type, or the one
exception type the function documents (``ValueError`` for replies, ``InputError`` for input
files) with a message that says what is wrong.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from aidsafe import FakeChatModel
from aidsafe.errors import InputError
from aidsafe.inputs import PromptItem, read_prompts
from aidsafe.kinds import get_kind, reply_schema
from aidsafe.kinds.generation import agreement, revision
from aidsafe.structured import CallOutcome, call_structured, parse_reply

KINDS = ("intents", "draft", "deliberation", "refinement")
REASONS = ("repetitive", "redundant", "deceptive", "policy_inconsistent")
POLICY_IDS = ["P1", "P2", "P3"]

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),  # NaN and +-Infinity too: json.dumps writes them, json.loads reads them back
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
kinds = st.sampled_from(KINDS)

short_text = st.text(max_size=40)
some_text = st.text(min_size=1, max_size=40)
thoughts_valid = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=60), "policies": st.lists(st.sampled_from(POLICY_IDS), max_size=4)}
)
critique_valid = st.fixed_dictionaries({key: some_text for key in ("intents", "policies", "flaws", "refusal")})
contexts = st.none() | st.fixed_dictionaries(
    {"thought_count": st.integers(0, 5)},
    optional={"superseded_indexes": st.lists(st.integers(1, 5), max_size=5).map(tuple), "rewrite_response": st.booleans()},
)
"""Validation contexts: the thought count, and for a refinement the superseded thoughts and whether it may rewrite."""


@st.composite
def valid_replies(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A reply of ``kind`` that satisfies its model, and the validation context it needs."""
    if kind == "intents":
        reply = {"explicit": draw(st.lists(some_text, min_size=1, max_size=4)), "implicit": draw(st.lists(some_text, max_size=4))}
        return reply, None
    if kind == "draft":
        reply = {"thoughts": draw(st.lists(thoughts_valid, min_size=1, max_size=6)), "response": draw(st.text(min_size=1, max_size=80))}
        return reply, None
    if kind == "deliberation":
        # an agreeing verdict carries no change; a disagreeing one adds at least one thought, and
        # with a thought count in context, its superseded indexes stay in range
        count = draw(st.none() | st.integers(min_value=1, max_value=12))
        context = None if count is None else {"thought_count": count}
        critique = draw(critique_valid)
        if draw(st.booleans()):
            return agreement(critique), context
        index = st.integers(min_value=1, max_value=count if count is not None else 10**6)
        superseded = draw(st.lists(st.fixed_dictionaries({"index": index, "reason": some_text}), max_size=8))
        thoughts = draw(st.lists(thoughts_valid, min_size=1, max_size=4))
        return revision(critique, thoughts, draw(short_text), superseded), context
    # refinement: with a thought count in context, indexes stay in range and one thought is kept
    # (superseded thoughts count as removed); a response only where the graph lets the refiner write one
    count = draw(st.none() | st.integers(min_value=1, max_value=12))
    top = count if count is not None else 10**6
    removed = draw(
        st.lists(
            st.fixed_dictionaries({"index": st.integers(min_value=1, max_value=top), "reason": st.sampled_from(REASONS)}),
            max_size=24,
        )
    )
    if count is None:
        return {"removed": removed, "response": draw(short_text)}, None
    superseded = draw(st.sets(st.integers(min_value=1, max_value=count), max_size=count - 1))
    keep = min(set(range(1, count + 1)) - superseded)
    if len({r["index"] for r in removed} | superseded) >= count:
        removed = [r for r in removed if r["index"] != keep]
    rewrite = draw(st.booleans())
    context = {"thought_count": count, "superseded_indexes": tuple(sorted(superseded)), "rewrite_response": rewrite}
    return {"removed": removed, "response": draw(short_text) if rewrite else ""}, context


def _near(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A right-looking value or any JSON value (wrong type, out of bounds ...)."""
    return st.one_of(value, json_values)


_THOUGHT_NEAR = st.fixed_dictionaries(
    {"text": _near(st.text(max_size=1100)), "policies": _near(st.lists(st.text(max_size=4), max_size=6))}
)
_NEAR_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "intents": {"explicit": st.lists(_near(short_text), max_size=6), "implicit": st.lists(_near(short_text), max_size=6)},
    "draft": {"thoughts": st.lists(_near(_THOUGHT_NEAR), max_size=10), "response": st.text(max_size=10) | st.just("x" * 6001)},
    "deliberation": {
        "critique": _near(critique_valid),
        "verdict": st.fixed_dictionaries(
            {},
            optional={
                "agree": _near(st.booleans()),
                "superseded": st.lists(_near(st.fixed_dictionaries({"index": _near(st.integers(-3, 30)), "reason": _near(short_text)})), max_size=10),
                "thoughts": st.lists(_near(_THOUGHT_NEAR), max_size=8),
                "response": _near(short_text),
            },
        ),
    },
    "refinement": {
        "removed": st.lists(
            _near(st.fixed_dictionaries({"index": _near(st.integers(-3, 30)), "reason": _near(st.sampled_from([*REASONS, "other"]))})),
            max_size=26,
        ),
        "response": _near(short_text),
    },
}


@st.composite
def near_miss_replies(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """The right keys with plausible-or-wrong values, some keys dropped, maybe an extra one."""
    fields = {name: draw(_near(strategy)) for name, strategy in _NEAR_FIELDS[kind].items()}
    for name in draw(st.sets(st.sampled_from(sorted(fields)))):
        del fields[name]
    if draw(st.booleans()):
        fields[draw(st.text(max_size=8))] = draw(json_values)
    return fields


def _fenced(text: str, fence: bool) -> str:
    return f"```json\n{text}\n```" if fence else text


# --- parse_reply ------------------------------------------------------------------------------


def _check_parse(kind: str, text: str, context: dict[str, Any] | None = None) -> BaseModel | None:
    """parse_reply gives a model of ``kind`` or a ValueError with a message; nothing else."""
    try:
        reply = parse_reply(kind, text, context)
    except ValueError as exc:
        assert str(exc).strip(), f"empty ValueError message for {text!r}"
        return None
    assert isinstance(reply, get_kind(kind).model)
    return reply


@SETTINGS
@given(kind=kinds, text=st.text(max_size=300))
@example(kind="intents", text="")
@example(kind="draft", text="```json\n```")
@example(kind="refinement", text="1" * 5000)  # int() digit limit: a ValueError that is not a JSONDecodeError
@example(kind="deliberation", text='"\\ud800"')
def test_parse_reply_arbitrary_text(kind: str, text: str) -> None:
    _check_parse(kind, text)


@SETTINGS
@given(kind=kinds, value=json_values, fence=st.booleans(), context=contexts)
def test_parse_reply_arbitrary_json(kind: str, value: Any, fence: bool, context: dict[str, Any] | None) -> None:
    _check_parse(kind, _fenced(json.dumps(value), fence), context)


@SETTINGS
@given(data=st.data(), kind=kinds, context=contexts)
def test_parse_reply_near_miss_dicts(data: st.DataObject, kind: str, context: dict[str, Any] | None) -> None:
    reply = data.draw(near_miss_replies(kind))
    _check_parse(kind, json.dumps(reply), context)


@SETTINGS
@given(data=st.data(), kind=kinds, fence=st.booleans(), indent=st.none() | st.integers(0, 4))
def test_parse_reply_valid_replies_always_parse(data: st.DataObject, kind: str, fence: bool, indent: int | None) -> None:
    reply, context = data.draw(valid_replies(kind))
    parsed = parse_reply(kind, _fenced(json.dumps(reply, indent=indent), fence), context)
    assert isinstance(parsed, get_kind(kind).model)
    assert parsed.model_dump() == reply
    assert parse_reply(kind, parsed.model_dump_json(), context) == parsed


@pytest.mark.parametrize("text", ["[" * 1000, '{"explicit": ' + "[" * 5000, "[" * 100_000])
def test_parse_reply_deeply_nested_json_is_a_value_error(text: str) -> None:
    # regression: json.loads raised RecursionError, which escaped parse_reply and call_structured
    with pytest.raises(ValueError, match=r"\S"):
        parse_reply("intents", text)


# --- call_structured --------------------------------------------------------------------------


def _call(kind: str, replies: list[str], context: dict[str, Any] | None = None) -> tuple[CallOutcome, list[str]]:
    """One structured call against a fake model answering ``replies`` in turn (the last repeats)."""
    sent: list[str] = []

    def responder(messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any]) -> str:
        text = replies[min(len(sent), len(replies) - 1)]
        sent.append(text)
        return text

    model = FakeChatModel(responder=responder)
    messages = [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "hello"}]
    schema = reply_schema(kind, POLICY_IDS)
    outcome = asyncio.run(call_structured(model, messages, kind=kind, schema=schema, context=context))
    return outcome, sent


def _check_outcome(kind: str, outcome: CallOutcome, sent: list[str]) -> None:
    assert isinstance(outcome, CallOutcome)
    assert (outcome.reply is None) != (outcome.error is None), outcome
    assert outcome.attempts == len(sent) and 1 <= len(sent) <= 2
    assert outcome.raw == sent[-1]
    if outcome.reply is not None:
        assert isinstance(outcome.reply, get_kind(kind).model)
    else:
        assert isinstance(outcome.error, str) and outcome.error.strip()
        if outcome.error.startswith(f"invalid {kind} reply"):
            assert len(sent) == 2  # one repair call was made (a refusal ends the call at once)


@FEW
@given(kind=kinds, first=st.text(max_size=200), second=st.text(max_size=200) | json_values.map(json.dumps))
@example(kind="intents", first="", second="")
def test_call_structured_arbitrary_replies_never_raise(kind: str, first: str, second: str) -> None:
    outcome, sent = _call(kind, [first, second])
    _check_outcome(kind, outcome, sent)


@FEW
@given(data=st.data(), kind=kinds, garbage=st.text(max_size=100))
def test_call_structured_repairs_after_garbage(data: st.DataObject, kind: str, garbage: str) -> None:
    reply, context = data.draw(valid_replies(kind))
    outcome, sent = _call(kind, ["{" + garbage, json.dumps(reply)], context)  # "{": never opens like a refusal
    _check_outcome(kind, outcome, sent)
    if len(sent) == 2:  # the garbage was rejected, and the repair call's valid reply taken
        assert outcome.reply is not None
        assert outcome.reply.model_dump() == reply


def test_call_structured_deeply_nested_reply_does_not_raise() -> None:
    outcome, sent = _call("intents", ["[" * 1000])
    _check_outcome("intents", outcome, sent)
    assert outcome.reply is None and len(sent) == 2 and outcome.raw == "[" * 1000


# --- input readers ------------------------------------------------------------------------------

_FRAGMENTS = [
    b'{"prompt": "a"}', b'{"id": 1, "prompt": "x"}', b'{"id": "1", "prompt": "y"}', b'{"prompt": ""}',
    b'{"prompt": 3}', b'{"id": null, "prompt": "z"}', b'{"prompt": "\\ud800"}', b"[1]", b"{", b"}",
    b"id,prompt", b"prompt", b"1,hello", b"2", b'"', b",", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\n\n",
    b"\x00", b"\xff", b"\xc3", b"\xc3\xa9", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\\", b"text line", b"1" * 30,
]
file_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map(b"".join),
    st.lists(st.text(max_size=20), max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
)
suffixes = st.sampled_from([".jsonl", ".csv", ".txt"])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the whole module; each example overwrites its own file there."""
    return tmp_path_factory.mktemp("props")


def _read(path: Path, **kwargs: Any) -> list[PromptItem] | InputError:
    """Read every prompt, or return the InputError; any other exception fails the test."""
    try:
        return list(read_prompts(path, **kwargs))
    except InputError as exc:
        return exc


def _check_items(items: list[PromptItem], path: Path) -> None:
    for item in items:
        assert isinstance(item, PromptItem)
        assert isinstance(item.prompt, str) and item.prompt.strip()
        item.prompt.encode("utf-8")  # writable to the UTF-8 output file
        assert isinstance(item.id, str) and item.id.strip()
        assert item.source == str(path)
    assert len({item.id for item in items}) == len(items)
    assert [item.line for item in items] == sorted({item.line for item in items})


def _check_error(error: InputError, path: Path) -> None:
    assert error.file == str(path)
    assert str(path) in str(error)
    assert error.message.strip()


@SETTINGS
@given(content=file_bytes, suffix=suffixes)
@example(content=b"id,prompt\n1,a\rb\n", suffix=".csv")
@example(content=b'{"prompt": ' + b"[" * 5000 + b"\n", suffix=".jsonl")
@example(content=b'{"prompt": ' + b"1" * 5000 + b"}\n", suffix=".jsonl")
def test_read_prompts_arbitrary_bytes(scratch: Path, content: bytes, suffix: str) -> None:
    path = scratch / f"strict{suffix}"
    path.write_bytes(content)
    strict = _read(path)
    if isinstance(strict, InputError):
        _check_error(strict, path)
    else:
        _check_items(strict, path)


@SETTINGS
@given(content=file_bytes, suffix=suffixes, limit=st.none() | st.integers(1, 5))
@example(content=b"id,prompt\n1,a\rb\n2,ok\n", suffix=".csv", limit=None)
@example(content=b'id,prompt\n1,"x\xff\ny"\n2,ok\n', suffix=".csv", limit=None)
def test_read_prompts_lenient_arbitrary_bytes(scratch: Path, content: bytes, suffix: str, limit: int | None) -> None:
    path = scratch / f"lenient{suffix}"
    path.write_bytes(content)
    problems: list[InputError] = []
    lenient = _read(path, lenient=True, problems=problems, limit=limit)
    for problem in problems:
        assert isinstance(problem, InputError)
        _check_error(problem, path)
        assert problem.line is not None and problem.line >= 1
    if isinstance(lenient, InputError):
        _check_error(lenient, path)
    else:
        _check_items(lenient, path)
        assert not {p.line for p in problems} & {i.line for i in lenient}
        if limit is not None:
            assert len(lenient) <= limit
    if limit is not None:
        return
    # lenient agrees with strict: same prompts when strict accepts the file, else the same first problem
    strict = _read(path)
    if isinstance(strict, InputError):
        if problems:
            assert str(problems[0]) == str(strict)
        else:
            assert isinstance(lenient, InputError) and str(lenient) == str(strict)
    else:
        assert lenient == strict and problems == []


def test_lenient_reading_is_finite_for_many_bad_lines(scratch: Path) -> None:
    path = scratch / "many.csv"
    path.write_bytes(b"id,prompt\n" + b"x\ry\n" * 500 + b"1,ok\n")
    problems: list[InputError] = []
    assert [i.prompt for i in read_prompts(path, lenient=True, problems=problems)] == ["ok"]
    assert len(problems) == 500
