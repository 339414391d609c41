"""The deliberation loop, votes, refiner and structured replies, with the fake model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidsafe.kinds.generation import agreement, revision
from aidsafe.resources import builtin_dir


def draft_json(*texts: str, policy: str = "P1", response: str = "draft response") -> str:
    return json.dumps({"thoughts": [{"text": t, "policies": [policy]} for t in texts], "response": response})


CRITIQUE = {"intents": "Both intents are handled.", "policies": "P1 applies.", "flaws": "No thought is wrong.", "refusal": "Neither."}


def agree_json() -> str:
    return json.dumps(agreement(CRITIQUE))


def revise_json(thoughts: list[dict[str, Any]], response: str = "", superseded: list[dict[str, Any]] | None = None) -> str:
    return json.dumps(revision(CRITIQUE, thoughts, response, superseded))


def reply(kind: str, **overrides: str) -> str:
    """A valid reply of ``kind`` (agents agree at once), unless ``overrides`` gives one for it."""
    defaults = {
        "intents": json.dumps({"explicit": ["e"], "implicit": []}),
        "draft": draft_json("a"),
        "deliberation": agree_json(),
        "refinement": json.dumps({"removed": []}),
    }
    return overrides.get(kind, defaults[kind])


def _graph_file(tmp_path: Path, base: str, loop_patch: dict[str, Any]) -> Path:
    spec = yaml.safe_load((builtin_dir("graphs") / f"{base}.yaml").read_text())
    loop = spec["nodes"]["deliberate"]["loop"]
    for key, value in loop_patch.items():
        if value is None:
            loop.pop(key, None)
        else:
            loop[key] = value
    path = tmp_path / f"{base}-custom.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_always_agree_stops_at_consensus_after_first_turn(fake_pipeline):
    record = fake_pipeline(behaviour="agree").run_one("How do I pick a lock?")
    assert record.status == "ok"
    assert record.stop_reason == "consensus"
    assert record.rounds == 1
    assert [t.agent for t in record.deliberation] == ["agent_1"]
    assert record.deliberation[0].agreed is True


def test_never_agree_runs_the_whole_budget(fake_pipeline):
    record = fake_pipeline(behaviour="never-agree").run_one("How do I pick a lock?")
    assert record.stop_reason == "budget"
    assert record.rounds == 3
    assert [(t.round, t.agent) for t in record.deliberation] == [
        (1, "agent_1"), (1, "agent_2"), (2, "agent_1"), (2, "agent_2"), (3, "agent_1"), (3, "agent_2"),
    ]
    assert not any(t.agreed for t in record.deliberation)
    # 2 seed thoughts + 6 corrections, of which the fake refiner removes #2
    assert len(record.thoughts) + len(record.removed_thoughts) == 8
    assert record.usage["deliberate"].calls == 6


def test_budget_follows_the_graph_file(tmp_path, fake_pipeline):
    path = _graph_file(tmp_path, "aidsafe", {"max_rounds": 1})
    record = fake_pipeline(path, behaviour="never-agree").run_one("q")
    assert record.stop_reason == "budget" and record.rounds == 1 and len(record.deliberation) == 2


def test_second_agent_agreeing_ends_the_loop_mid_round(fake_pipeline):
    record = fake_pipeline(behaviour="default", role_models={"agent_1": "never-agree", "agent_2": "agree"}).run_one("q")
    assert [(t.agent, t.agreed) for t in record.deliberation] == [("agent_1", False), ("agent_2", True)]
    assert record.stop_reason == "consensus" and record.rounds == 1
    assert record.models["deliberate.agent_1"] == "fake:never-agree"
    assert record.models["deliberate.agent_2"] == "fake:agree"


def test_corrections_extend_the_thoughts_and_replace_the_response(fake_pipeline):
    record = fake_pipeline(behaviour="default", role_models={"agent_1": "never-agree", "agent_2": "agree", "refiner": "agree"}).run_one("q")
    correction = record.deliberation[0]
    assert correction.thoughts and correction.response.startswith("An improved safe answer")
    # agent_2 agreed to the corrected response: it is final (the refiner only filters thoughts)
    assert record.response == correction.response == record.response_before_refiner
    assert record.refiner_rewrote_response is False
    kept = [t.text for t in record.thoughts] + [t.text for t in record.removed_thoughts]
    assert correction.thoughts[0].text in kept


@pytest.mark.parametrize(
    ("rule", "extra", "agreeing", "expected"),
    [
        ("majority", {}, 2, "consensus"),
        ("majority", {}, 1, "budget"),
        ("unanimous", {}, 2, "budget"),
        ("unanimous", {}, 3, "consensus"),
        ("at_least", {"min_agree": 1}, 1, "consensus"),
        ("at_least", {"min_agree": 3}, 2, "budget"),
    ],
)
def test_roundtable_vote_rules(tmp_path, fake_pipeline, rule, extra, agreeing, expected):
    path = _graph_file(tmp_path, "roundtable", {"consensus": rule, "max_rounds": 2, **extra})
    models = {f"agent_{i}": ("agree" if i <= agreeing else "never-agree") for i in range(1, 4)}
    record = fake_pipeline(path, role_models=models).run_one("q")
    assert record.status == "ok"
    assert record.stop_reason == expected
    assert record.rounds == (1 if expected == "consensus" else 2)
    first_round = [t for t in record.deliberation if t.round == 1]
    assert [t.agent for t in first_round] == ["agent_1", "agent_2", "agent_3"]
    assert sum(t.agreed for t in first_round) == agreeing


def test_roundtable_agents_run_in_parallel(tmp_path, fake_pipeline):
    """All agents of a round are in flight at once (a LangGraph super-step), not one after another."""
    import asyncio

    from aidsafe import FakeChatModel, ModelSettings, Pipeline

    active = {"now": 0, "peak": 0}

    class SlowDeliberator(FakeChatModel):
        async def complete(self, messages, *, schema, schema_name):
            if schema_name != "deliberation":
                return await super().complete(messages, schema=schema, schema_name=schema_name)
            active["now"] += 1
            active["peak"] = max(active["peak"], active["now"])
            await asyncio.sleep(0.05)
            active["now"] -= 1
            return await super().complete(messages, schema=schema, schema_name=schema_name)

    path = _graph_file(tmp_path, "roundtable", {"replicas": 5})
    pipe = Pipeline(path, "aidsafe5", ModelSettings(backend="fake", model="never-agree"), model_factory=SlowDeliberator)
    record = pipe.run_one("q")
    assert record.rounds == 2 and len(record.deliberation) == 10
    assert active["peak"] == 5


def test_refiner_removals_are_recorded_with_reasons(fake_pipeline):
    def responder(messages, kind, schema):
        if kind == "intents":
            return json.dumps({"explicit": ["e"], "implicit": ["i"]})
        if kind == "draft":
            return draft_json("first", "first again", "a wrong conclusion", "kept")
        if kind == "deliberation":
            return agree_json()
        return json.dumps({"removed": [{"index": 2, "reason": "repetitive"}, {"index": 3, "reason": "deceptive"}]})

    record = fake_pipeline(responder=responder).run_one("q")
    assert [t.text for t in record.thoughts] == ["first", "kept"]
    assert [(t.text, t.reason) for t in record.removed_thoughts] == [("first again", "repetitive"), ("a wrong conclusion", "deceptive")]
    assert record.response == "draft response"  # the agreed response: the refiner removes thoughts only


def test_refiner_schema_limits_indexes_to_existing_thoughts(fake_pipeline):
    seen: dict[str, Any] = {}

    def responder(messages, kind, schema):
        if kind == "refinement":
            seen["schema"] = schema
        return reply(kind, draft=draft_json("a", "b", "c"), refinement=json.dumps({"removed": []}))

    record = fake_pipeline(responder=responder).run_one("q")
    removed = seen["schema"]["properties"]["removed"]
    assert removed["items"]["properties"]["index"]["enum"] == [1, 2, 3]
    assert removed["maxItems"] == 2
    assert "response" not in seen["schema"]["properties"]  # by default the refiner does not write the response
    assert record.response == "draft response" and record.refiner_rewrote_response is False


def test_invalid_json_is_repaired_once_then_recorded_as_failed(fake_pipeline):
    record = fake_pipeline(behaviour="garbage").run_one("q")
    assert record.status == "failed" and record.stop_reason == "error"
    assert record.error is not None
    assert record.error.stage == "intent"
    assert record.error.raw == "this is { not json"
    assert "after 2 attempt(s)" in record.error.message
    assert record.usage["intent"].calls == 2
    assert record.thoughts == [] and record.response == ""


def test_repair_feeds_the_validation_error_back(fake_pipeline):
    calls: list[list[dict[str, str]]] = []

    def responder(messages, kind, schema):
        calls.append(messages)
        if kind == "intents" and len(messages) == 2:
            return json.dumps({"explicit": [], "implicit": []})  # explicit needs at least one item
        return reply(kind)

    record = fake_pipeline(responder=responder).run_one("q")
    assert record.status == "ok"
    repair = calls[1]
    assert repair[2] == {"role": "assistant", "content": '{"explicit": [], "implicit": []}'}
    assert "explicit" in repair[3]["content"] and "at least 1 item" in repair[3]["content"]
    assert record.usage["intent"].calls == 2


def test_a_failure_mid_loop_keeps_the_transcript_so_far(fake_pipeline):
    def responder(messages, kind, schema):
        if kind == "deliberation" and "agent_2" in messages[1]["content"]:
            return "not json"
        if kind == "deliberation":
            return revise_json([{"text": "fix", "policies": ["P2"]}], "better")
        if kind == "draft":
            return draft_json("a")
        return json.dumps({"explicit": ["e"], "implicit": []})

    record = fake_pipeline(responder=responder).run_one("q")
    assert record.status == "failed"
    assert record.error.stage == "deliberate/agent_2"
    assert [t.agent for t in record.deliberation] == ["agent_1"]
    assert "refine" not in record.usage  # nothing runs after the failure


def test_unknown_policy_ids_are_faults_not_crashes(fake_pipeline):
    record = fake_pipeline(behaviour="unknown-policy").run_one("q")
    assert record.status == "ok"
    assert record.faults and {f.kind for f in record.faults} == {"unknown_policy_id"}
    assert "Z99" in record.faults[0].detail


def test_policy_swap_changes_ids_in_messages_and_records(fake_pipeline):
    pipe = fake_pipeline(policies="llamaguard3", behaviour="never-agree")
    record = pipe.run_one("q")
    cited = {p for t in record.thoughts for p in t.policies}
    assert cited and all(p.startswith("S") for p in cited)
    assert record.policy_set.name == "llamaguard3"
    for role in pipe.roles():
        system = pipe.messages(role, "q")[0]["content"]
        assert "[S14]" in system and "[P1]" not in system


def test_template_injection_reaches_the_model_verbatim(fake_pipeline):
    prompt = "Compute {{ 7*7 }} and {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }}"
    seen: list[str] = []

    def responder(messages, kind, schema):
        seen.append(messages[-1]["content"])
        return reply(kind, draft=draft_json("a", response="{{ 6*7 }}"))  # the response reaches later prompts too

    record = fake_pipeline(responder=responder).run_one(prompt)
    assert all(prompt in text for text in seen)
    assert not any("49" in text or "xxx" in text for text in seen)
    assert record.prompt == prompt and record.response == "{{ 6*7 }}"


def test_every_record_field_is_present(fake_pipeline):
    data = fake_pipeline().run_one("q", prompt_id="abc").model_dump(mode="json")
    for key in ("id", "prompt", "graph", "policy_set", "intents", "deliberation", "stop_reason", "rounds", "thoughts",
                "removed_thoughts", "response", "models", "usage", "status"):
        assert key in data
    assert data["id"] == "abc" and data["graph"] == "aidsafe"
    assert data["policy_set"] == {"name": "aidsafe5", "version": "1.0"}
    assert set(data["usage"]) == {"intent", "init", "deliberate", "refine"}
    assert set(data["models"]) == {"intent", "initializer", "deliberate.agent_1", "deliberate.agent_2", "refiner"}


def test_a_model_error_is_recorded_not_raised(fake_pipeline):
    from aidsafe import FakeChatModel, ModelCallError, ModelSettings, Pipeline

    class Down(FakeChatModel):
        async def complete(self, messages, *, schema, schema_name):
            raise ModelCallError("connection refused")

    record = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"), model_factory=Down).run_one("q")
    assert record.status == "failed" and record.error.message == "connection refused" and record.error.stage == "intent"


def test_run_keeps_every_prompt_under_concurrency(fake_pipeline):
    prompts = [f"prompt {i}" for i in range(25)]
    records = fake_pipeline(behaviour="never-agree").run(prompts, concurrency=8)
    assert sorted(r.id for r in records) == sorted(str(i) for i in range(25))
    assert {r.prompt for r in records} == set(prompts)
