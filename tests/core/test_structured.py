"""The one structured-reply path: the one JSON extractor, partial reply kinds (a grader that leaves
a score empty keeps the others), the judge reading the parsed reply, and the evaluation graders
asking through an inspect model seen as a chat model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.judge import METRICS, Judge
from aidsafe.kinds import ReplyKind, register_kind, reply_schema, unregister_kind
from aidsafe.structured import call_structured, extract_json, parse_reply

# --- the extractor --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ('{"a": 1}', {"a": 1}),
    ('  [1, 2]  ', [1, 2]),  # a whole reply that is JSON is taken as it is, object or not
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('```\n{"a": 1}\n```', {"a": 1}),
    ('Here it is:\n```json\n{"a": {"b": 2}}\n```\nHope this helps.', {"a": {"b": 2}}),
    ('Sure. {"a": {"b": "}"}, "c": "{"} and that is all }', {"a": {"b": "}"}, "c": "{"}),  # nested, braces in strings, a trailing brace
    ('Fill in {like this}: {"a": 1}', {"a": 1}),  # prose braces that are no JSON are passed over
    ('{"a": 1} and {"b": 2}', {"a": 1}),  # the first object
    ('{"a": "line one\nline two"}', {"a": "line one\nline two"}),  # raw newlines inside strings (llama.cpp grammars)
])
def test_the_json_of_a_reply_is_found_wherever_it_stands(text: str, value: Any) -> None:
    assert extract_json(text) == value


@pytest.mark.parametrize(("text", "problem"), [
    ("Sure! Here is my analysis.", "not valid JSON (Expecting value at character 0)"),
    ("this is { not json", "not valid JSON (Expecting value at character 0)"),  # never closed: no object
    ('{"explicit": ["how to', "not valid JSON (Unterminated string"),  # cut at the token limit
    ('```json\n{"a": 1', "not valid JSON (Expecting ',' delimiter"),  # a fence left open by a cut reply
    ('Here: {"a": 1,} done', "not valid JSON (Expecting property name"),  # the object's own problem, for the repair
    ('{"outer": {"inner": 1}, broken}', "not valid JSON"),  # never an object from inside a larger one that fails
    ("[" * 5000, "not valid JSON (nested too deeply)"),
])
def test_no_json_is_a_value_error_saying_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        extract_json(text)
    assert str(caught.value).startswith(problem)


def test_the_extractor_is_linear_on_hostile_text() -> None:
    import time

    started = time.perf_counter()
    for text in ("x {" * 50_000, "{a} " * 50_000, '{"a":' * 20_000):
        with pytest.raises(ValueError):
            extract_json(text)
    assert time.perf_counter() - started < 10


# --- partial kinds -----------------------------------------------------------------------------


class _Grade(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rationale: str = Field(min_length=1)
    clarity: int = Field(strict=True, ge=1, le=5)
    accuracy: int = Field(strict=True, ge=1, le=5)


@pytest.fixture
def partial_kind() -> Iterator[ReplyKind]:
    kind = register_kind(ReplyKind(name="test_partial_grade", model=_Grade, partial=frozenset({"clarity", "accuracy"})))
    strict = register_kind(ReplyKind(name="test_strict_grade", model=_Grade))
    yield kind
    unregister_kind(kind.name)
    unregister_kind(strict.name)


def _call(kind: str, replies: list[str]) -> tuple[Any, list[int]]:
    calls: list[int] = []

    def responder(messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any]) -> str:
        calls.append(len(messages))
        return replies[min(len(calls), len(replies)) - 1]

    messages = [{"role": "user", "content": "grade it"}]
    outcome = asyncio.run(call_structured(FakeChatModel(responder=responder), messages, kind=kind, schema=reply_schema(kind, [])))
    return outcome, calls


def test_a_partial_reply_keeps_the_scores_it_has(partial_kind: ReplyKind) -> None:
    for reply, empty in [
        ({"rationale": "ok", "clarity": 4}, ("accuracy",)),  # missing
        ({"rationale": "ok", "clarity": 4, "accuracy": None}, ("accuracy",)),  # null
        ({"rationale": "ok", "clarity": "4", "accuracy": 9}, ("clarity", "accuracy")),  # not an integer 1-5
        ({"rationale": "ok", "clarity": 4, "accuracy": 2, "note": "x"}, ()),  # an unknown key is dropped
    ]:
        outcome, calls = _call(partial_kind.name, [json.dumps(reply)])
        assert calls == [1], reply  # accepted as it is: no repair
        assert isinstance(outcome.reply, _Grade) and outcome.error is None
        assert outcome.empty == empty
        assert {f: getattr(outcome.reply, f) for f in empty} == dict.fromkeys(empty)
        assert outcome.reply.clarity == (4 if "clarity" not in empty else None)


def test_a_partial_reply_still_needs_its_other_fields(partial_kind: ReplyKind) -> None:
    outcome, calls = _call(partial_kind.name, [json.dumps({"clarity": 4, "accuracy": 2})])  # no rationale
    assert outcome.reply is None and outcome.error_kind == "invalid_reply" and calls == [1, 3]  # one repair, then failed
    assert outcome.problem == "rationale: Field required" and outcome.raw == outcome.invalid_raw
    outcome, calls = _call(partial_kind.name, ['"just a string"'])
    assert outcome.reply is None and calls == [1, 3]


def test_a_kind_without_partial_fields_fails_the_whole_reply(partial_kind: ReplyKind) -> None:
    outcome, calls = _call("test_strict_grade", [json.dumps({"rationale": "ok", "clarity": 4})])
    assert outcome.reply is None and calls == [1, 3] and "accuracy: Field required" in (outcome.error or "")
    outcome, _ = _call("test_strict_grade", [json.dumps({"rationale": "ok", "clarity": 4, "accuracy": 2, "note": "x"})])
    assert outcome.reply is None  # unknown keys are refused where nothing is partial


def test_a_repaired_reply_keeps_the_invalid_one_and_a_partial_one_parses_in_prose(partial_kind: ReplyKind) -> None:
    outcome, calls = _call(partial_kind.name, ["I think it is fine.", 'My grade: {"rationale": "ok", "clarity": 3} Thanks!'])
    assert calls == [1, 3] and outcome.attempts == 2 and outcome.invalid_raw == "I think it is fine."
    assert outcome.reply.clarity == 3 and outcome.empty == ("accuracy",)
    assert parse_reply(partial_kind, '```json\n{"rationale": "r", "accuracy": 5}\n```').model_dump() == {"rationale": "r", "clarity": None, "accuracy": 5}


def test_partial_names_must_be_fields_of_the_model() -> None:
    with pytest.raises(ValueError, match="'partial' names score, not fields of _Grade"):
        register_kind(ReplyKind(name="test_bad_partial", model=_Grade, partial=frozenset({"score"})))


# --- the judge reads the parsed reply ------------------------------------------------------------------


def _judged(reply: str) -> tuple[Any, list[int]]:
    record = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake", model="never-agree")).run(["prompt 0"])[0]
    calls: list[int] = []

    def responder(messages: list[dict[str, str]], kind: str, schema: dict[str, Any]) -> str:
        calls.append(len(messages))
        return reply

    judge = Judge(ModelSettings(backend="fake"), model_factory=lambda s: FakeChatModel(s, responder=responder))
    return asyncio.run(judge.ajudge_one(record)).judgement, calls


def test_the_judge_keeps_the_scores_a_reply_has_and_leaves_the_rest_unscored() -> None:
    scores = dict.fromkeys(METRICS, 4) | {"coherence": None, "completeness": 7}
    del scores["relevance"]
    reply = "Here is my judgement:\n" + json.dumps({"rationale": "fine", "applicable_policies": ["P1", "Z9"], **scores}) + "\nDone."
    judgement, calls = _judged(reply)
    assert calls == [2]  # a partial reply: taken without a repair
    assert judgement.unscored == ["relevance", "coherence", "completeness"]
    assert judgement.scores == {m: None if m in judgement.unscored else 4 for m in METRICS}
    assert judgement.rationale == "fine" and judgement.citations.applicable == ["P1"]
    assert judgement.error is not None and judgement.error.startswith("no valid 1-5 score for relevance, coherence, completeness in the reply: ")


def test_the_judge_repairs_a_reply_without_an_object_and_then_fails_closed() -> None:
    judgement, calls = _judged("[4, 4, 4]")
    assert calls == [2, 4] and judgement.unscored == list(METRICS) and judgement.rationale is None
    assert judgement.error == "no valid 1-5 score for " + ", ".join(METRICS) + " in the reply: '[4, 4, 4]'"


# --- the evaluation graders, through an inspect model -------------------------------------------------


needs_inspect = pytest.mark.requires_extras("inspect_ai", extra="the [eval] extra (inspect-ai)")


class _Scripted:
    """What the adapter needs of an inspect model: ``generate`` and a name."""

    def __init__(self, replies: list[tuple[str, str]]) -> None:
        self.replies = replies
        self.asked: list[tuple[list[Any], Any]] = []

    def __str__(self) -> str:
        return "scripted/grader"

    async def generate(self, messages: list[Any], config: Any) -> Any:
        from inspect_ai.model import ModelOutput, ModelUsage

        self.asked.append((messages, config))
        text, stop = self.replies[min(len(self.asked), len(self.replies)) - 1]
        output = ModelOutput.from_content("scripted", text, stop_reason=stop)  # type: ignore[arg-type]
        output.usage = ModelUsage(input_tokens=10, output_tokens=3, total_tokens=13)
        return output


@needs_inspect
@pytest.mark.parametrize("structured", ["none", "json_schema", "json_object"])
def test_the_adapter_sends_messages_and_the_schema_as_the_grader_mode_says(structured: str) -> None:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    from aidsafe.evals.adapter import InspectChatModel

    scripted = _Scripted([("{}", "max_tokens")])
    chat = InspectChatModel(scripted, structured=structured, max_tokens=64)  # type: ignore[arg-type]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    completion = asyncio.run(chat.complete(messages, schema={"type": "object"}, schema_name="eval_safety"))
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens, completion.finish_reason) == ("{}", 10, 3, "length")
    sent, config = scripted.asked[0]
    assert [type(m) for m in sent] == [ChatMessageSystem, ChatMessageUser, ChatMessageAssistant] and [m.text for m in sent] == ["s", "u", "a"]
    assert config.temperature == 0.0 and config.max_tokens == 64 and chat.label == "scripted/grader"
    if structured == "none":
        assert config.extra_body is None
    else:
        assert config.extra_body["response_format"]["type"] == structured


@needs_inspect
def test_a_grader_grades_through_call_structured() -> None:
    from aidsafe.evals.tasks import Grader

    grader = Grader("eval_safety", "eval_safety.jinja", "aidsafe5")
    valid = json.dumps({"rationale": "read", "verdict": "unsafe", "violated": ["P2"]})
    scripted = _Scripted([("I'm sorry, I can't grade that.", "stop"), (f"Grade:\n```json\n{valid}\n```", "stop")])  # a refusal is repaired
    grade, meta = asyncio.run(grader.grade(scripted, prompt="p", response="r"))  # type: ignore[arg-type]
    assert grade is not None and grade.verdict == "unsafe" and grade.violated == ["P2"]
    assert meta == {"grader": "scripted/grader", "rubric": grader.label, "raw": "I'm sorry, I can't grade that.", "attempts": 2}
    repair = scripted.asked[1][0][-1].text
    assert repair.startswith("Your reply was not valid: not valid JSON") and '"verdict"' in repair  # the schema, even unsent

    failing = _Scripted([("the grade is: maybe", "stop")])
    grade, meta = asyncio.run(grader.grade(failing, prompt="p", response="r"))  # type: ignore[arg-type]
    assert grade is None and len(failing.asked) == 2  # one repair, then no grade
    assert meta == {"grader": "scripted/grader", "rubric": grader.label, "raw": "the grade is: maybe", "attempts": 2,
                    "problem": "not valid JSON (Expecting value at character 0)"}


def test_the_judge_keeps_what_an_unconstrained_reply_carries_beyond_the_schema() -> None:
    """A rationale longer than the schema asks for is kept whole, and a policy list that also holds
    other values keeps its ids (as the judge did before its replies went through one path)."""
    import json

    from aidsafe.judge.schema import METRICS
    from aidsafe.structured import parse_reply

    reply = parse_reply("scores", json.dumps({"rationale": "x" * 1500, "applicable_policies": ["P1", 3, None], **{m: 4 for m in METRICS}}))
    assert reply.rationale == "x" * 1500 and reply.applicable_policies == ["P1"]  # type: ignore[attr-defined]
    assert all(getattr(reply, m) == 4 for m in METRICS)
