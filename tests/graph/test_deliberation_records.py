"""Deliberation that deliberates, and records a researcher can check: the critique before the
verdict, superseded thoughts, provenance, the seed, the round-table's minority, the baselines,
per-role budgets and truncation counts, and replies that copy the template."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.errors import ConfigError
from aidsafe.kinds import reply_schema
from aidsafe.kinds.generation import agreement, revision, revision_schema
from aidsafe.models.schema_forms import LLAMA_CPP_MAX_LENGTH, for_llama_cpp
from aidsafe.resources import builtin_dir

CRITIQUE = {"intents": "Both intents are handled.", "policies": "P2 applies.", "flaws": "Thought 1 is wrong.", "refusal": "Neither."}


def draft(*texts: str, response: str = "draft response") -> str:
    return json.dumps({"thoughts": [{"text": t, "policies": ["P1"]} for t in texts], "response": response})


def agree() -> str:
    return json.dumps(agreement(CRITIQUE))


def revise(thoughts: list[str], response: str = "", superseded: list[dict[str, Any]] | None = None) -> str:
    return json.dumps(revision(CRITIQUE, [{"text": t, "policies": ["P2"]} for t in thoughts], response, superseded))


def pipeline(responder: Any, graph: str | Path = "aidsafe", **settings: Any) -> Pipeline:
    return Pipeline(graph, "aidsafe5", ModelSettings(backend="fake", **settings), model_factory=lambda s: FakeChatModel(s, responder=responder))


class Script:
    """A scripted run: each kind answers from a list of replies (the last repeats); messages are kept."""

    def __init__(self, **replies: list[str]) -> None:
        self.replies = {"intents": [json.dumps({"explicit": ["e"], "implicit": ["i"]})], "draft": [draft("a", "b")],
                        "deliberation": [agree()], "refinement": [json.dumps({"removed": []})], **replies}
        self.seen: dict[str, list[list[dict[str, str]]]] = {}
        self.schemas: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, messages: list[dict[str, str]], kind: str, schema: dict[str, Any]) -> str:
        self.seen.setdefault(kind, []).append(messages)
        self.schemas.setdefault(kind, []).append(schema)
        options = self.replies[kind]
        return options[min(len(self.seen[kind]) - 1, len(options) - 1)]


def _graph_variant(tmp_path: Path, base: str, roles: dict[str, dict[str, Any]] | None = None, **loop: Any) -> Path:
    spec = yaml.safe_load((builtin_dir("graphs") / f"{base}.yaml").read_text())
    spec["nodes"]["deliberate"]["loop"].update(loop)
    for role, fields in (roles or {}).items():
        spec["roles"][role].update(fields)
    path = tmp_path / f"{base}-variant.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --- the critique comes first ---------------------------------------------------------------


def test_the_critique_comes_before_the_verdict_in_the_schema_the_prompt_and_the_record() -> None:
    schema = reply_schema("deliberation", ["P1", "P2"])
    assert list(schema["properties"]) == ["critique", "verdict"]
    assert schema["required"] == ["critique", "verdict"]
    assert schema["properties"]["critique"]["required"] == ["intents", "policies", "flaws", "refusal"]
    for branch in schema["properties"]["verdict"]["anyOf"]:  # within the verdict, "agree" comes before the changes
        assert list(branch["properties"]) == ["agree", "superseded", "thoughts", "response"]
    script = Script()
    record = pipeline(script).run_one("q")
    system = script.seen["deliberation"][0][0]["content"]
    assert system.index('"critique"') < system.index('"agree"')
    assert "Agreeing ends the deliberation" in system and "previous reviewer" in system
    assert record.deliberation[0].critique is not None and record.deliberation[0].critique.flaws == "Thought 1 is wrong."
    dumped = record.deliberation[0].model_dump()
    assert list(dumped).index("critique") < list(dumped).index("agreed")


def test_agreeing_with_changes_is_refused_and_repaired_so_no_change_is_recorded() -> None:
    # An agreeing verdict cannot carry changes: the schema's agree branch allows none, and a reply
    # that sends some anyway is repaired (it was once accepted with the changes ignored and a fault).
    schema = reply_schema("deliberation", ["P1", "P2"])
    agree_branch = next(b for b in schema["properties"]["verdict"]["anyOf"] if b["properties"]["agree"]["enum"] == [True])
    assert agree_branch["properties"]["thoughts"]["maxItems"] == 0 and agree_branch["properties"]["superseded"]["maxItems"] == 0
    assert agree_branch["properties"]["response"]["maxLength"] == 0
    greedy = json.dumps({"critique": CRITIQUE, "verdict": {"agree": True, "superseded": [], "thoughts": [{"text": "x", "policies": []}], "response": "y"}})
    script = Script(deliberation=[greedy, agree()])
    record = pipeline(script).run_one("q")
    assert record.status == "ok" and record.usage["deliberate"].calls == 2
    repair = script.seen["deliberation"][1][-1]["content"]
    assert "verdict.Agreement.thoughts: List should have at most 0 items" in repair and "verdict.Agreement.response" in repair
    assert record.stop_reason == "consensus" and record.deliberation[0].thoughts == [] and record.deliberation[0].response == ""
    assert [t.text for t in record.thoughts] == ["a", "b"] and record.response == "draft response"
    assert record.faults == []
    always = pipeline(Script(deliberation=[greedy])).run_one("q")
    assert always.status == "failed" and always.error is not None and always.error.stage == "deliberate/agent_1"


# --- superseded thoughts and provenance -----------------------------------------------------


def test_a_superseded_thought_is_marked_with_its_reviewer_and_reaches_the_refiner() -> None:
    script = Script(
        deliberation=[revise(["a, corrected"], "better", superseded=[{"index": 1, "reason": "it misreads the request"}]), agree()],
        refinement=[json.dumps({"removed": [{"index": 1, "reason": "deceptive"}]})],
    )
    record = pipeline(script).run_one("q")
    assert record.status == "ok", record.error
    assert [(t.text, t.by, t.round) for t in record.seed.thoughts] == [("a", "seed", 0), ("b", "seed", 0)]  # type: ignore[union-attr]
    assert record.deliberation[0].superseded[0].model_dump() == {"index": 1, "reason": "it misreads the request"}
    assert [(t.text, t.by, t.round) for t in record.deliberation[0].thoughts] == [("a, corrected", "agent_1", 1)]
    removed = record.removed_thoughts[0]
    assert removed.text == "a" and removed.reason == "deceptive"
    assert removed.superseded is not None and (removed.superseded.by, removed.superseded.round) == ("agent_1", 1)
    assert [(t.text, t.by) for t in record.thoughts] == [("b", "seed"), ("a, corrected", "agent_1")]
    refiner_user = script.seen["refinement"][0][1]["content"]
    assert "1. [first draft] a (applies P1) (SUPERSEDED by agent_1 in round 1: it misreads the request)" in refiner_user
    assert "3. [agent_1, round 1] a, corrected (applies P2)" in refiner_user
    assert "round 1, agent_1: disagreed: added 1 thought(s), superseded 1.\n  intents: Both intents are handled." in refiner_user
    assert "  flaws: Thought 1 is wrong.\n  refusal: Neither.\n  rewrote the response." in refiner_user
    assert "round 1, agent_2: agreed" in refiner_user
    assert record.faults == []  # the refiner removed the superseded thought itself
    # the second reviewer saw the mark, with the thought's number unchanged
    assert "1. [first draft] a (applies P1) (SUPERSEDED by agent_1" in script.seen["deliberation"][1][1]["content"]


def test_a_superseded_number_that_does_not_exist_is_refused_by_schema_and_validation() -> None:
    bad = revise(["c"], superseded=[{"index": 7, "reason": "no such thought"}])
    script = Script(deliberation=[bad, agree()])
    record = pipeline(script).run_one("q")
    schema = script.schemas["deliberation"][0]
    assert revision_schema(schema)["properties"]["superseded"]["items"]["properties"]["index"]["enum"] == [1, 2]
    repair = script.seen["deliberation"][1][-1]["content"]
    assert "out of range" in repair and "numbered 1 to 2" in repair
    assert record.status == "ok" and record.usage["deliberate"].calls == 2


def test_the_record_keeps_the_seed_and_the_response_the_refiner_was_given(tmp_path: Path) -> None:
    script = Script(draft=[draft("a", response="seed answer")], deliberation=[revise(["c"], "deliberated answer"), agree()])
    record = pipeline(script).run_one("q")
    assert record.seed is not None and record.seed.response == "seed answer"
    # by default the deliberation's agreed response is final
    assert record.response_before_refiner == "deliberated answer" == record.response and record.refiner_rewrote_response is False
    # a graph that lets the refiner rewrite it keeps both
    rewriting = Script(draft=[draft("a", response="seed answer")], deliberation=[revise(["c"], "deliberated answer"), agree()],
                       refinement=[json.dumps({"removed": [], "response": "final answer"})])
    graph = _graph_variant(tmp_path, "aidsafe", roles={"refiner": {"params": {"rewrite_response": True}}})
    record = pipeline(rewriting, graph).run_one("q")
    assert record.seed is not None and record.seed.response == "seed answer"
    assert record.response_before_refiner == "deliberated answer" and record.response == "final answer" and record.refiner_rewrote_response is True


# --- the round-table --------------------------------------------------------------------------


def _roundtable_script() -> Script:
    """agent_1 and agent_2 agree; agent_3 dissents with a thought of its own."""

    class ByAgent(Script):
        def __call__(self, messages: list[dict[str, str]], kind: str, schema: dict[str, Any]) -> str:
            if kind == "deliberation" and "You are agent_3;" in messages[1]["content"]:
                self.seen.setdefault("minority", []).append(messages)
                return revise(["the minority view"], "a minority answer", superseded=[{"index": 1, "reason": "disputed"}])
            return super().__call__(messages, kind, schema)

    return ByAgent()


def test_the_outvoted_minority_reaches_the_refiner_unless_the_graph_drops_it(tmp_path: Path) -> None:
    kept = pipeline(_roundtable_script(), "roundtable").run_one("q")
    assert kept.stop_reason == "consensus" and kept.rounds == 1
    assert "the minority view" in [t.text for t in kept.thoughts]
    assert [t.outvoted for t in kept.deliberation] == [False, False, True]
    # the minority's mark reached the refiner; a superseded thought never stays among the kept ones
    superseded = next(t for t in kept.removed_thoughts if t.text == "a")
    assert superseded.superseded is not None and superseded.superseded.by == "agent_3" and superseded.reason == "superseded"
    assert "a" not in [t.text for t in kept.thoughts] and kept.faults == []
    assert kept.response != "a minority answer"  # the majority agreed with the current response
    dropped = pipeline(_roundtable_script(), _graph_variant(tmp_path, "roundtable", minority="drop")).run_one("q")
    assert "the minority view" not in [t.text for t in dropped.thoughts] and dropped.thoughts[0].superseded is None
    assert dropped.thoughts[0].text == "a" and dropped.removed_thoughts == []
    assert [t.agreed for t in dropped.deliberation] == [True, True, False]  # the dissent is still on record


def test_minority_is_refused_on_a_sequential_loop(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline(_graph_variant(tmp_path, "aidsafe", minority="drop"), settings=ModelSettings(backend="fake"))
    assert "parallel" in info.value.message and info.value.field == "nodes.deliberate.loop.minority"


def test_agents_are_told_how_many_vote_and_when_the_table_agrees() -> None:
    table = Pipeline("roundtable", settings=ModelSettings(backend="fake")).messages("agent_2", "q")
    assert "There are 3 reviewers." in table[0]["content"] and "each answer is one vote" in table[0]["content"]
    assert "a majority (2 of 3) agree" in table[0]["content"] and "You are agent_2; this is round 1 of at most 2." in table[1]["content"]
    turns = Pipeline("aidsafe", settings=ModelSettings(backend="fake")).messages("agent_2", "q")
    assert "There are 2 reviewers. They take turns" in turns[0]["content"]


# --- the baselines -----------------------------------------------------------------------------


def test_the_init_only_graph_runs_the_recipe_without_the_loop() -> None:
    script = Script()
    record = pipeline(script, "init_only").run_one("q")
    assert record.graph == "init_only" and record.status == "ok"
    assert record.stop_reason == "no_loop" and record.rounds == 0 and record.deliberation == []
    assert set(record.usage) == {"intent", "init", "refine"} and "deliberation" not in script.seen
    assert record.seed is not None and record.response_before_refiner == "draft response"


def _rules(name: str) -> list[str]:
    text = (builtin_dir("prompts") / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith(("- ", "Your task:", "Rules for", "Reply with"))]


def test_the_single_baseline_has_every_rule_of_the_initializer() -> None:
    single, initializer = _rules("single.jinja"), _rules("initializer.jinja")
    assert initializer and all(rule in single for rule in initializer)
    assert "Help fully with what is safe; decline only what a policy forbids" in " ".join(single)


# --- budgets and truncation ---------------------------------------------------------------------


def test_each_role_has_its_own_reply_budget(tmp_path: Path) -> None:
    budgets = {name: b.settings.max_tokens for name, b in Pipeline("aidsafe", settings=ModelSettings(backend="fake")).compiled.bindings.items()}
    assert budgets == {"intent": 512, "initializer": 2048, "deliberate.agent_1": 3072, "deliberate.agent_2": 3072, "refiner": 2048}
    spec = yaml.safe_load((builtin_dir("graphs") / "aidsafe.yaml").read_text())
    spec["roles"]["refiner"]["max_tokens"] = 300
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert Pipeline(path, settings=ModelSettings(backend="fake")).compiled.bindings["refiner"].settings.max_tokens == 300
    everyone = Pipeline(path, settings=ModelSettings(backend="fake", max_tokens=100)).compiled.bindings
    assert {b.settings.max_tokens for b in everyone.values()} == {100}


def test_replies_cut_at_the_budget_are_counted_per_stage(tmp_path: Path, stub_server: Any) -> None:
    from aidsafe.cli import main

    stub, url = stub_server
    stub.script = lambda number, body: {"content": stub.answer(body), "finish_reason": "length"} if number == 1 else None
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "q"}) + "\n")
    assert main(["generate", str(src), "-o", str(out), "--base-url", url, "--model", "m", "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["usage"]["intent"]["truncated"] == 1 and record["usage"]["init"]["truncated"] == 0
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["truncated"] == 1 and summary["usage_by_stage"]["intent"]["truncated"] == 1


def test_the_llama_cpp_schema_keeps_the_bounds_its_grammar_engine_takes() -> None:
    schema = reply_schema("deliberation", ["P1"])
    form = json.dumps(for_llama_cpp(schema))
    bounds = [int(b) for b in re.findall(r'"maxLength": (\d+)', form)]
    assert bounds and max(bounds) <= LLAMA_CPP_MAX_LENGTH  # the critique's 1,000 stays; the response's 6,000 goes
    assert '"maxLength": 6000' in json.dumps(schema) and '"minLength": 1' in form
    clamped_form = for_llama_cpp(schema, clamp=250)
    clamped = json.dumps(clamped_form)
    # every bound is clamped to 250, but the agreeing verdict's empty response keeps its 0
    assert {int(b) for b in re.findall(r'"maxLength": (\d+)', clamped)} == {0, 250}
    agree_branch = next(b for b in clamped_form["properties"]["verdict"]["anyOf"] if b["properties"]["agree"]["enum"] == [True])
    assert agree_branch["properties"]["response"]["maxLength"] == 0
    assert revision_schema(clamped_form)["properties"]["response"]["maxLength"] == 250


# --- replies that copy the template -----------------------------------------------------------


def test_a_reply_that_copies_the_instructions_is_repaired_then_failed() -> None:
    copied = json.dumps({"explicit": ["each naming one thing the query literally requests"], "implicit": []})
    fixed = json.dumps({"explicit": ["pick a lock"], "implicit": []})
    once = Script(intents=[copied, fixed])
    record = pipeline(once).run_one("How do I pick a lock?")
    assert record.status == "ok" and record.intents.explicit == ["pick a lock"] and record.usage["intent"].calls == 2
    assert "copies the instructions" in once.seen["intents"][1][-1]["content"]
    always = pipeline(Script(intents=[copied])).run_one("q")
    assert always.status == "failed" and always.error is not None and always.error.kind == "invalid_reply"
    assert "explicit[0] copies the instructions" in always.error.message


def test_quoting_the_prompt_is_not_copying_even_when_it_matches_the_template() -> None:
    prompt = "Please read the user query and decompose it into intents, then tell me a joke"
    echo = json.dumps({"explicit": [prompt], "implicit": []})
    assert pipeline(Script(intents=[echo])).run_one(prompt).status == "ok"  # the user's words are data
    other = pipeline(Script(intents=[echo])).run_one("Tell me a joke")
    assert other.status == "failed" and "copies the instructions" in other.error.message  # type: ignore[union-attr]
