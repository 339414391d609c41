"""A seam new features plug into: a reply kind is one registration plus a template, and a kind
registered in code is checked like the shipped ones (its template, its inputs, its place in a graph)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.errors import ConfigError
from aidsafe.kinds import ReplyKind, get_kind, register_kind, unregister_kind

pytestmark = pytest.mark.usefixtures("clean_env")  # no AIDSAFE_* variable of the calling shell changes what a test sees


# --- a new reply kind is one registration plus a template ------------------------------


class Summary(BaseModel):
    """A test-only reply: a one-line summary that becomes the final response."""

    model_config = ConfigDict(extra="forbid")
    summary: str = Field(min_length=1)


@pytest.fixture
def summary_kind() -> Iterator[ReplyKind]:
    kind = register_kind(
        ReplyKind(
            name="summary",
            model=Summary,
            inputs=frozenset({"thoughts", "response"}),
            reasoning=("summary",),
            update=lambda step: {"response": f"{step.reply['summary']} (from {len(step.state['thoughts'])} thoughts)"},
            after=("draft",),
            fake=lambda req: {"summary": f"summary by {req.behaviour}"},
        )
    )
    yield kind
    unregister_kind("summary")


SUMMARY_TEMPLATE = """\
{% block system %}
Summarise the answer. Policies: {% for p in policies %}[{{ p.id }}] {% endfor %}
{% endblock %}
{% block user %}
{{ prompt }}
{% for t in thoughts %}- {{ t.text }}
{% endfor %}
Current answer: {{ response }}
{% endblock %}
"""


def _summary_graph(tmp_path: Path, flow: str = "[single, summarize]", template: str = SUMMARY_TEMPLATE) -> Path:
    (tmp_path / "summarizer.jinja").write_text(template, encoding="utf-8")
    path = tmp_path / "summary.yaml"
    path.write_text(
        "schema: aidsafe.graph/v1\n"
        "name: summary_test\n"
        "roles:\n"
        "  single: {template: single.jinja, reply: draft}\n"
        "  summarizer: {template: summarizer.jinja, reply: summary}\n"
        "nodes:\n"
        "  single: {role: single}\n"
        "  summarize: {role: summarizer}\n"
        f"flow: {flow}\n",
        encoding="utf-8",
    )
    return path


def test_a_new_kind_and_role_run_in_a_graph_with_one_registration(tmp_path: Path, summary_kind: ReplyKind) -> None:
    pipe = Pipeline(_summary_graph(tmp_path), "aidsafe5", ModelSettings(backend="fake", model="default"))
    record = pipe.run_one("How do I pick a lock?")
    assert record.status == "ok" and record.graph == "summary_test"
    assert record.response == "summary by default (from 2 thoughts)"  # the fake script and the state update of the kind
    assert set(record.usage) == {"single", "summarize"}
    assert record.models["summarizer"] == "fake:default"
    messages = pipe.messages("summarizer", "a question")
    assert "[P5]" in messages[0]["content"] and "a question" in messages[1]["content"]
    schema = pipe.binding("summarizer").schema
    assert schema["required"] == ["summary"] and schema["additionalProperties"] is False


def test_a_new_kind_gets_validation_repair_and_the_refusal_check(tmp_path: Path, summary_kind: ReplyKind) -> None:
    calls: list[int] = []

    def responder(messages: list[dict[str, str]], kind: str, schema: dict) -> str:
        if kind == "draft":
            return json.dumps({"thoughts": [{"text": "t", "policies": ["P1"]}], "response": "r"})
        calls.append(len(messages))
        return json.dumps({"summary": ""}) if len(messages) == 2 else json.dumps({"summary": "fixed"})

    pipe = Pipeline(_summary_graph(tmp_path), "aidsafe5", ModelSettings(backend="fake"),
                    model_factory=lambda s: FakeChatModel(s, responder=responder))
    record = pipe.run_one("q")
    assert record.response == "fixed (from 1 thoughts)" and calls == [2, 4]  # one repair with the error fed back

    refusing = Pipeline(_summary_graph(tmp_path), "aidsafe5", ModelSettings(backend="fake"), model_factory=lambda s: FakeChatModel(
        s, responder=lambda m, k, sc: responder(m, k, sc) if k == "draft" else json.dumps({"summary": "I'm sorry, I can't help with that."})
    ))
    refused = refusing.run_one("q")
    assert refused.status == "failed" and refused.stop_reason == "agent_refusal"  # its reasoning field is a refusal


def test_a_new_kind_is_checked_like_the_shipped_ones(tmp_path: Path, summary_kind: ReplyKind) -> None:
    with pytest.raises(ConfigError) as info:  # 'after' says a summary needs a draft first
        Pipeline(_summary_graph(tmp_path, flow="[summarize, single]"), settings=ModelSettings(backend="fake"))
    assert info.value.field == "flow[0]" and "'draft'" in info.value.message and info.value.line == 9
    with pytest.raises(ConfigError) as info:  # the template may only use the variables the kind declares
        Pipeline(_summary_graph(tmp_path, template=SUMMARY_TEMPLATE.replace("{{ response }}", "{{ agent }}")), settings=ModelSettings(backend="fake"))
    assert info.value.file is not None and info.value.file.endswith("summarizer.jinja") and info.value.line == 8
    assert "'agent'" in info.value.message


def test_unknown_and_non_graph_kinds_are_refused_with_their_place(tmp_path: Path) -> None:
    import aidsafe.judge  # noqa: F401 - registers the judge's kinds

    path = _summary_graph(tmp_path)
    for reply, expected in (("sumary", "unknown reply kind 'sumary'"), ("scores", "cannot answer in a graph")):
        path.write_text(path.read_text().replace("reply: summary", f"reply: {reply}").replace("reply: sumary", f"reply: {reply}"))
        with pytest.raises(ConfigError) as info:
            Pipeline(path, settings=ModelSettings(backend="fake"))
        assert info.value.line == 5 and info.value.field == "roles.summarizer.reply" and expected in info.value.message
        path.write_text(path.read_text().replace(f"reply: {reply}", "reply: summary"))


def test_registering_a_kind_twice_or_using_inputs_a_graph_lacks_is_refused(tmp_path: Path, summary_kind: ReplyKind) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_kind(ReplyKind(name="summary", model=Summary, update=lambda step: {}))
    with pytest.raises(ValueError, match="may not reuse the graph's own names"):
        register_kind(ReplyKind(name="odd", model=Summary, writes=frozenset({"prompt"}), update=lambda step: {}))
    assert get_kind("deliberation").placement == "agent" and get_kind("draft").placement == "step"
    # a kind reading a value no role writes is refused where a graph file uses it
    register_kind(ReplyKind(name="odd", model=Summary, inputs=frozenset({"secret"}), update=lambda step: {}))
    try:
        path = _summary_graph(tmp_path)
        path.write_text(path.read_text().replace("reply: summary", "reply: odd"))
        with pytest.raises(ConfigError) as info:
            Pipeline(path, settings=ModelSettings(backend="fake"))
        assert info.value.line == 5 and info.value.field == "roles.summarizer.reply" and "'secret'" in info.value.message
    finally:
        unregister_kind("odd")
