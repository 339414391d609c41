"""Deliberation that can be made to deliberate, and data that cannot carry what a reviewer replaced:
``min_rounds``, critiques passed on (with their budget), the verdict's schema, superseded thoughts
kept out of training data, the round-table's minority, and who writes the final response."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidsafe.errors import AidsafeError
from aidsafe.kinds import reply_schema
from aidsafe.kinds.generation import DeliberationReply, agreement, revision, revision_schema
from aidsafe.models import FakeChatModel, ModelSettings
from aidsafe.pipeline import Pipeline
from aidsafe.records import Record
from aidsafe.resources import builtin_dir

CRITIQUE = {"intents": "Both intents are handled.", "policies": "P1 applies.", "flaws": "No thought is wrong.", "refusal": "Neither."}


def _critique(tag: str) -> dict[str, str]:
    return {**CRITIQUE, "flaws": f"critique-{tag}"}


def _draft(*texts: str, response: str = "seed response") -> str:
    return json.dumps({"thoughts": [{"text": t, "policies": ["P1"]} for t in texts], "response": response})


class Script:
    """Each kind answers from its list (the last repeats); every prompt is kept."""

    def __init__(self, **replies: list[Any]) -> None:
        self.replies: dict[str, list[Any]] = {
            "intents": [json.dumps({"explicit": ["e"], "implicit": ["i"]})],
            "draft": [_draft("a", "b")],
            "deliberation": [json.dumps(agreement(CRITIQUE))],
            "refinement": [json.dumps({"removed": []})],
            **replies,
        }
        self.seen: dict[str, list[list[dict[str, str]]]] = {}
        self.schemas: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, messages: list[dict[str, str]], kind: str, schema: dict[str, Any]) -> str:
        self.seen.setdefault(kind, []).append(messages)
        self.schemas.setdefault(kind, []).append(schema)
        options = self.replies[kind]
        reply = options[min(len(self.seen[kind]) - 1, len(options) - 1)]
        return reply if isinstance(reply, str) else json.dumps(reply)

    def user(self, kind: str, call: int) -> str:
        return next(m["content"] for m in self.seen[kind][call] if m["role"] == "user")


def _pipeline(script: Script, graph: str | Path = "aidsafe") -> Pipeline:
    return Pipeline(graph, "aidsafe5", ModelSettings(backend="fake"), model_factory=lambda s: FakeChatModel(s, responder=script))


def _variant(tmp_path: Path, base: str = "aidsafe", name: str = "variant", roles: dict[str, dict[str, Any]] | None = None, **loop: Any) -> Path:
    spec = yaml.safe_load((builtin_dir("graphs") / f"{base}.yaml").read_text())
    spec["nodes"]["deliberate"]["loop"].update(loop)
    for role, fields in (roles or {}).items():
        spec["roles"][role].update(fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- min_rounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_rounds", "turns", "stop"), [(0, 1, "consensus"), (1, 2, "consensus"), (2, 4, "consensus"), (3, 6, "consensus")])
def test_min_rounds_keeps_an_agreement_from_ending_the_loop_early(tmp_path: Path, min_rounds: int, turns: int, stop: str) -> None:
    script = Script()  # every reviewer agrees at once
    record = _pipeline(script, _variant(tmp_path, min_rounds=min_rounds, max_rounds=3)).run_one("q")
    assert record.status == "ok" and record.stop_reason == stop
    assert len(record.deliberation) == turns and all(t.agreed for t in record.deliberation)
    assert record.rounds == max(1, min_rounds)
    assert [t.agent for t in record.deliberation] == ["agent_1", "agent_2"] * (turns // 2) + ["agent_1"] * (turns % 2)


def test_min_rounds_in_a_round_table_keeps_voting(tmp_path: Path) -> None:
    script = Script()
    record = _pipeline(script, _variant(tmp_path, "roundtable", min_rounds=2, max_rounds=2)).run_one("q")
    assert record.status == "ok" and record.rounds == 2 and len(record.deliberation) == 6
    assert record.stop_reason == "consensus"


def test_a_disagreement_still_runs_to_the_budget_with_min_rounds(tmp_path: Path) -> None:
    script = Script(deliberation=[revision(CRITIQUE, [{"text": "fix", "policies": ["P1"]}])])
    record = _pipeline(script, _variant(tmp_path, min_rounds=1, max_rounds=2)).run_one("q")
    assert record.stop_reason == "budget" and len(record.deliberation) == 4


@pytest.mark.parametrize(
    ("loop", "message"),
    [({"min_rounds": 4, "max_rounds": 3}, "min_rounds 4 exceeds max_rounds 3"), ({"min_rounds": -1}, "min_rounds")],
)
def test_bad_min_rounds_is_refused_with_the_file_and_field(tmp_path: Path, loop: dict[str, Any], message: str) -> None:
    path = _variant(tmp_path, **loop)
    with pytest.raises(AidsafeError) as caught:
        _pipeline(Script(), path)
    text = str(caught.value)
    assert message in text and path.name in text and "min_rounds" in text


def test_the_agents_are_told_the_minimum_and_the_picture_shows_it(tmp_path: Path) -> None:
    script = Script()
    pipe = _pipeline(script, _variant(tmp_path, min_rounds=2, max_rounds=3))
    pipe.run_one("q")
    system = next(m["content"] for m in script.seen["deliberation"][0] if m["role"] == "system")
    assert "Agreeing ends the deliberation once 2 full rounds are done" in system
    assert "first_agree or budget of 3 rounds, at least 2" in pipe.compiled.mermaid()
    from aidsafe.graph.draw import loop_label

    assert loop_label(pipe.compiled.spec.nodes["deliberate"].loop) == "deliberation loop: sequential, exit on first_agree, budget 3 rounds, at least 2"


# --- critiques passed on ------------------------------------------------------------------------


def test_each_reviewer_sees_the_earlier_critiques_and_the_refiner_sees_every_one(tmp_path: Path) -> None:
    replies = [revision(_critique(f"t{i}"), [{"text": f"fix {i}", "policies": ["P1"]}]) for i in range(1, 4)] + [agreement(_critique("t4"))]
    script = Script(deliberation=replies)
    record = _pipeline(script, _variant(tmp_path, max_rounds=3)).run_one("q")
    assert [t.critique.flaws for t in record.deliberation if t.critique] == ["critique-t1", "critique-t2", "critique-t3", "critique-t4"]
    assert "critique-" not in script.user("deliberation", 0)  # the first reviewer has none to see
    third = script.user("deliberation", 2)
    assert "critique-t1" in third and "critique-t2" in third and "critique-t3" not in third
    refiner = script.user("refinement", 0)
    assert all(f"critique-t{i}" in refiner for i in range(1, 5))
    assert not [f for f in record.faults if f.kind == "history_truncated"]


def test_the_history_budget_drops_the_oldest_critiques_and_counts_them(tmp_path: Path) -> None:
    replies = [revision(_critique(f"t{i}"), [{"text": f"fix {i}", "policies": ["P1"]}]) for i in range(1, 6)] + [agreement(_critique("t6"))]
    script = Script(deliberation=replies)
    budget = 2 * sum(len(v) for v in _critique("t1").values()) + 20  # room for about two turns
    roles = {"deliberator": {"params": {"history_chars": budget}}, "refiner": {"params": {"history_chars": budget}}}
    record = _pipeline(script, _variant(tmp_path, max_rounds=3, roles=roles)).run_one("q")
    fifth = script.user("deliberation", 4)
    assert "critique-t4" in fifth and "critique-t3" in fifth and "critique-t1" not in fifth
    assert "2 earlier turn(s) left out for length" in fifth
    refiner = script.user("refinement", 0)
    assert "critique-t6" in refiner and "critique-t5" in refiner and "critique-t1" not in refiner
    truncated = [f for f in record.faults if f.kind == "history_truncated"]
    assert {f.stage for f in truncated} >= {"deliberate/agent_1", "refine"}
    assert any("4 earlier turn(s) left out" in f.detail for f in truncated if f.stage == "refine")


# --- the verdict's schema -----------------------------------------------------------------------


def test_a_reviewer_who_disagrees_must_add_a_thought_by_schema_and_by_validation() -> None:
    schema = reply_schema("deliberation", ["P1", "P2"], {"thought_count": 2})
    assert set(schema["properties"]) == {"critique", "verdict"} and list(schema["properties"]) == ["critique", "verdict"]
    branches = schema["properties"]["verdict"]["anyOf"]
    agree = next(b for b in branches if b["properties"]["agree"]["enum"] == [True])
    assert agree["properties"]["thoughts"]["maxItems"] == 0 and agree["properties"]["response"]["maxLength"] == 0
    assert revision_schema(schema)["properties"]["thoughts"]["minItems"] == 1
    only_response = {"critique": CRITIQUE, "verdict": {"agree": False, "superseded": [], "thoughts": [], "response": "new"}}
    with pytest.raises(ValueError, match="at least 1 item"):
        DeliberationReply.model_validate(only_response)
    agree_with_changes = {"critique": CRITIQUE, "verdict": {"agree": True, "superseded": [], "thoughts": [{"text": "x", "policies": []}], "response": ""}}
    with pytest.raises(ValueError):
        DeliberationReply.model_validate(agree_with_changes)


def test_a_response_only_rewrite_is_repaired_not_recorded() -> None:
    bad = {"critique": CRITIQUE, "verdict": {"agree": False, "superseded": [], "thoughts": [], "response": "helps after all"}}
    script = Script(deliberation=[bad, revision(CRITIQUE, [{"text": "why the answer changes", "policies": ["P1"]}], "helps after all"), agreement(CRITIQUE)])
    record = _pipeline(script).run_one("q")
    assert record.status == "ok"
    first = record.deliberation[0]
    assert [t.text for t in first.thoughts] == ["why the answer changes"] and first.response == "helps after all"
    assert "at least 1 item" in script.user("deliberation", 1) or any("at least 1 item" in m["content"] for m in script.seen["deliberation"][1])


# --- superseded thoughts never reach training data ----------------------------------------------


def _superseding_script(**extra: list[Any]) -> Script:
    fix = revision(CRITIQUE, [{"text": "the correction", "policies": ["P1"]}], superseded=[{"index": 1, "reason": "wrong"}])
    return Script(draft=[_draft("wrong thought", "good thought")], deliberation=[fix, agreement(CRITIQUE)], **extra)


def test_a_superseded_thought_the_refiner_keeps_is_removed_and_counted() -> None:
    script = _superseding_script()  # the refiner removes nothing
    record = _pipeline(script).run_one("q")
    assert record.status == "ok"
    assert [t.text for t in record.thoughts] == ["good thought", "the correction"]
    assert [(t.text, t.reason) for t in record.removed_thoughts] == [("wrong thought", "superseded")]
    assert record.faults == []  # the refiner was told superseded thoughts go anyway: not listing one is no fault
    assert "removed whatever you decide" in next(m["content"] for m in script.seen["refinement"][0] if m["role"] == "system")


def test_keeping_only_superseded_thoughts_is_refused() -> None:
    script = _superseding_script(refinement=[{"removed": [{"index": 2, "reason": "redundant"}, {"index": 3, "reason": "redundant"}]}, {"removed": [{"index": 2, "reason": "redundant"}]}])
    record = _pipeline(script).run_one("q")
    assert record.status == "ok" and [t.text for t in record.thoughts] == ["the correction"]
    assert any("keep at least one" in m["content"] for m in script.seen["refinement"][1])


def _record_with_superseded() -> Record:
    """An older record (or a hand-edited one) whose kept thoughts still carry a superseded one."""
    return Record.model_validate(
        {
            "id": "1", "prompt": "q", "graph": "aidsafe", "policy_set": {"name": "aidsafe5", "version": "1.0"}, "intents": {},
            "deliberation": [], "stop_reason": "consensus", "rounds": 1,
            "thoughts": [
                {"text": "wrong thought", "policies": ["P1"], "by": "seed", "round": 0, "superseded": {"by": "agent_1", "round": 1, "reason": "wrong"}},
                {"text": "the correction", "policies": ["P1"], "by": "agent_1", "round": 1},
            ],
            "removed_thoughts": [], "response": "answer", "models": {}, "usage": {}, "status": "ok",
        }
    )


def test_no_export_carries_a_superseded_thought(tmp_path: Path) -> None:
    from aidsafe.cli import main
    from aidsafe.pairs.schema import PairRecord, Side
    from aidsafe.train.datasets import export_dpo, export_sft

    record = _record_with_superseded()
    records = tmp_path / "records.jsonl"
    records.write_text(record.model_dump_json() + "\n")

    sft = export_sft(records, tmp_path / "sft")
    text = (tmp_path / "sft" / "train.jsonl").read_text()
    assert "the correction" in text and "wrong thought" not in text
    assert sft.superseded_dropped == 1 and "superseded thoughts left out | 1" in (tmp_path / "sft" / "README.md").read_text()

    pair = PairRecord(
        id="1", prompt="q", policy_set=record.policy_set, source={"graph": "aidsafe"}, models={}, status="ok", stop_reason="violation",
        chosen=Side(thoughts=record.thoughts, response="answer"), rejected=Side(thoughts=[record.thoughts[1]], response="bad"),
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(pair.model_dump_json() + "\n")
    dpo = export_dpo(pairs, tmp_path / "dpo", include_flagged=True, unjudged=True)
    text = (tmp_path / "dpo" / "train.jsonl").read_text()
    assert "the correction" in text and "wrong thought" not in text and dpo.superseded_dropped == 1

    out = tmp_path / "released.csv"
    assert main(["export", str(records), "-o", str(out)]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["refined_thoughts"] == "the correction"


# --- the round-table's minority -----------------------------------------------------------------


def _minority_script() -> Script:
    dissent = revision(_critique("minority"), [{"text": "minority thought", "policies": ["P1"]}], "the minority's response")
    return Script(deliberation=[agreement(_critique("majority-1")), agreement(_critique("majority-2")), dissent])


def test_the_outvoted_minority_reaches_the_refiner_with_its_critique_and_response(tmp_path: Path) -> None:
    script = _minority_script()
    record = _pipeline(script, "roundtable").run_one("q")
    assert record.stop_reason == "consensus"
    outvoted = [t for t in record.deliberation if t.outvoted]
    assert [t.critique.flaws for t in outvoted if t.critique] == ["critique-minority"]
    refiner = script.user("refinement", 0)
    assert "critique-minority" in refiner and "outvoted" in refiner and "the minority's response" in refiner
    assert "minority thought" in refiner
    assert record.response == "seed response"  # the majority agreed with it


def test_minority_drop_keeps_the_outvoted_turn_from_the_refiner(tmp_path: Path) -> None:
    script = _minority_script()
    record = _pipeline(script, _variant(tmp_path, "roundtable", minority="drop")).run_one("q")
    assert [t.outvoted for t in record.deliberation] == [False, False, True]  # still recorded
    refiner = script.user("refinement", 0)
    assert "critique-minority" not in refiner and "the minority's response" not in refiner and "minority thought" not in refiner


# --- who writes the final response --------------------------------------------------------------


def test_by_default_the_final_response_is_the_deliberations() -> None:
    fix = revision(CRITIQUE, [{"text": "why", "policies": ["P1"]}], "the agreed response")
    script = Script(deliberation=[fix, agreement(CRITIQUE)])
    record = _pipeline(script).run_one("q")
    assert record.response == "the agreed response" == record.response_before_refiner
    assert record.refiner_rewrote_response is False
    assert "response" not in script.schemas["refinement"][0]["properties"]


def test_a_refiner_writing_a_response_it_may_not_is_repaired() -> None:
    script = Script(refinement=[{"removed": [], "response": "unreviewed"}, {"removed": []}])
    record = _pipeline(script).run_one("q")
    assert record.status == "ok" and record.response == "seed response"
    assert len(script.seen["refinement"]) == 2


def test_a_graph_may_let_the_refiner_rewrite_and_the_record_keeps_both(tmp_path: Path) -> None:
    script = Script(refinement=[{"removed": [], "response": "refiner's response"}])
    graph = _variant(tmp_path, roles={"refiner": {"params": {"rewrite_response": True}}})
    record = _pipeline(script, graph).run_one("q")
    assert record.response == "refiner's response" and record.response_before_refiner == "seed response"
    assert record.refiner_rewrote_response is True
    assert "response" in script.schemas["refinement"][0]["properties"]
    assert "write the final response" in next(m["content"] for m in script.seen["refinement"][0] if m["role"] == "system")


# --- the round ablation -------------------------------------------------------------------------


def test_the_round_ablation_runs_0_to_3_rounds_on_the_same_prompts_and_compares_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("rounds_ablation", Path(__file__).parents[2] / "examples" / "rounds_ablation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompts = Path(__file__).parents[2] / "examples" / "prompts.jsonl"
    args = module.parse([str(prompts), "-o", str(tmp_path / "abl"), "--", "--backend", "fake"])
    assert args.rounds == [0, 1, 2, 3] and args.model_args == ["--backend", "fake"]
    table = module.run(args.prompts, tmp_path / "abl", args.rounds, args.model_args, [])
    ids = None
    for k in range(4):
        lines = [json.loads(line) for line in (tmp_path / "abl" / f"rounds_{k}.jsonl").read_text().splitlines()]
        assert all(r["status"] == "ok" for r in lines) and {r["rounds"] for r in lines} == {k}
        assert {r["graph"] for r in lines} == {"init_only" if k == 0 else f"aidsafe-rounds-{k}"}
        pairs = {(r["id"], r["prompt"]) for r in lines}
        assert ids is None or pairs == ids  # the same prompts under the same ids in every run
        ids = pairs
    text = table.read_text()
    assert "| mean rounds | 0.00 | 1.00 | 2.00 | 3.00 |" in text and "rounds_3 − rounds_0" in text
    numbers = json.loads((tmp_path / "abl" / "compare.json").read_text())
    assert numbers  # the machine-readable table is written too
    with pytest.raises(SystemExit):
        module.parse([str(prompts), "-o", "x", "--rounds", "0,0"])


def test_a_record_left_with_only_superseded_thoughts_gives_no_training_example_and_no_pair(tmp_path: Path) -> None:
    from aidsafe.train.datasets import export_sft

    record = _record_with_superseded()
    assert record.thoughts[1].superseded is None
    every = record.model_copy(update={"thoughts": [record.thoughts[0]]})
    other = record.model_copy(update={"id": "2"})
    records = tmp_path / "records.jsonl"
    records.write_text(every.model_dump_json() + "\n" + other.model_dump_json() + "\n")
    counts = export_sft(records, tmp_path / "sft")
    assert counts.safety == 1 and counts.left_out["only superseded thoughts"] == 1
    assert "wrong thought" not in (tmp_path / "sft" / "train.jsonl").read_text()


def test_the_refiner_schema_offers_only_thoughts_it_may_remove() -> None:
    schema = reply_schema("refinement", ["P1"], {"thought_count": 4, "superseded_indexes": (1, 3), "rewrite_response": False, "history_chars": 8000})
    removed = schema["properties"]["removed"]
    assert removed["items"]["properties"]["index"]["enum"] == [2, 4] and removed["maxItems"] == 1


def test_the_newest_critique_is_always_shown_shortened_if_it_alone_is_too_long() -> None:
    from aidsafe.graph.nodes import critique_history

    big = {"round": 2, "agent": "agent_2", "agreed": False, "critique": {k: "x" * 900 for k in ("intents", "policies", "flaws", "refusal")},
           "thoughts": [{"text": "t" * 900, "policies": []}] * 5, "response": "r" * 5000, "superseded": []}
    small = {**big, "round": 1, "agent": "agent_1", "critique": _critique("old"), "response": ""}
    kept, omitted = critique_history([small, big], 1000)
    assert omitted == 1 and len(kept) == 1 and kept[0]["agent"] == "agent_2" and kept[0]["shortened"]
    assert sum(len(v) for v in kept[0]["critique"].values()) <= 1000
    kept, omitted = critique_history([small, {**big, "critique": _critique("new")}], 1000)  # thoughts and response are not printed: both fit
    assert omitted == 0 and [t["agent"] for t in kept] == ["agent_1", "agent_2"]


def test_role_params_are_checked_when_the_graph_loads(tmp_path: Path) -> None:
    for params, message in (({"history_chars": "lots"}, "int expected"), ({"history_chars": -1}, "0 or more"),
                            ({"rewrite_response": "false"}, "bool expected"), ({"rewrite_respons": True}, "did you mean 'rewrite_response'")):
        path = _variant(tmp_path, name=f"p{len(message)}", roles={"refiner": {"params": params}})
        with pytest.raises(AidsafeError, match=message) as caught:
            _pipeline(Script(), path)
        assert f"roles.refiner.params.{next(iter(params))}" in str(caught.value) and path.name in str(caught.value)


def test_min_rounds_left_at_0_keeps_the_graph_digest() -> None:
    from aidsafe.graph.spec import load_graph_spec

    spec, _ = load_graph_spec("aidsafe")
    assert "min_rounds" not in spec.nodes["deliberate"].loop.model_dump()
    assert spec.nodes["deliberate"].loop.model_copy(update={"min_rounds": 2}).model_dump()["min_rounds"] == 2
