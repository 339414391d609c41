"""Comparisons a researcher can trust (first-turn agreement, zero-edit consensus, graders kept apart),
the judge's rationale, and the released AIDSAFE CSV in both directions."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.aidsafe_csv import read_released, split_thoughts
from aidsafe.cli import main
from aidsafe.errors import InputError
from aidsafe.judge import Judge, JudgedRecord, PairVerdict
from aidsafe.judge.comparison import compare
from aidsafe.judge.stats import grader_agreement
from aidsafe.kinds import reply_schema
from aidsafe.kinds.generation import agreement, revision
from aidsafe.policies import load_policy_set
from aidsafe.records import Record
from aidsafe.summary import deliberation_stats


def _turn(agent: str, agreed: bool, round_no: int = 1) -> dict[str, Any]:
    thoughts = [] if agreed else [{"text": "a fix", "policies": ["P1"]}]
    return {"round": round_no, "agent": agent, "model": "fake:x", "agreed": agreed, "thoughts": thoughts, "response": "",
            "usage": {}}


def _record(record_id: str, turns: list[dict[str, Any]], stop: str = "consensus") -> Record:
    return Record.model_validate(
        {"id": record_id, "prompt": "p", "graph": "aidsafe", "policy_set": {"name": "aidsafe5", "version": "1.0"}, "intents": {},
         "deliberation": turns, "stop_reason": stop, "rounds": max([t["round"] for t in turns], default=0), "thoughts": [],
         "removed_thoughts": [], "response": "r", "models": {}, "usage": {}, "status": "ok"}
    )


def test_first_turn_agreement_and_zero_edit_consensus() -> None:
    records = [
        _record("a", [_turn("agent_1", True)]),  # agreed with the seed at once: first turn and zero edit
        _record("b", [_turn("agent_1", False), _turn("agent_2", True)]),  # consensus after an edit
        _record("c", [_turn("agent_1", False), _turn("agent_2", False)], stop="budget"),
        _record("d", [], stop="no_loop"),  # no deliberation: not counted
    ]
    stats = deliberation_stats(records)
    assert stats["first_turn_agreement"] == pytest.approx(1 / 3)
    assert stats["zero_edit_consensus"] == pytest.approx(1 / 3)
    assert stats["consensus_rate"] == pytest.approx(2 / 3)  # consensus counts round-1 agreement too


def _verdict(i: int, winner: str | None, judge: str) -> PairVerdict:
    return PairVerdict(id=f"x{i}", a="A", b="B", winner=winner, verdicts=[winner, winner], judge_model=judge, rubric="r@1")  # type: ignore[arg-type]


def test_two_graders_are_kept_apart_and_their_agreement_measured() -> None:
    first = [_verdict(i, w, "openai:judge-1") for i, w in enumerate(["a", "a", "b", "tie", "a", None])]
    second = [_verdict(i, w, "openai:judge-2") for i, w in enumerate(["a", "b", "b", "tie", "a", "a"])]
    # 5 ids scored by both: 4 equal verdicts; p_o = 0.8; marginals first a .6 b .2 tie .2, second a .4 b .4 tie .2:
    # p_e = .24 + .08 + .04 = .36; kappa = (.8 - .36) / (1 - .36) = 0.6875
    agreement = grader_agreement(first, second)
    assert agreement == {"n": 5, "agreement": pytest.approx(0.8), "kappa": pytest.approx(0.6875)}
    document = compare({"A": [], "B": []}, [*first, *second])
    assert [p["grader"] for p in document["pairs"]] == ["openai:judge-1 / r@1", "openai:judge-2 / r@1"]
    assert document["pairs"][0]["a_wins"] == 3 and document["pairs"][1]["a_wins"] == 3
    assert document["grader_agreement"] == [
        {"a": "A", "b": "B", "grader_1": "openai:judge-1 / r@1", "grader_2": "openai:judge-2 / r@1", **agreement}
    ]


# --- the judge --------------------------------------------------------------------------------


def test_the_judge_reasons_before_scoring_and_its_verdicts_name_the_grader() -> None:
    schema = reply_schema("scores", ["P1", "P2"])
    assert list(schema["properties"])[:2] == ["rationale", "applicable_policies"]
    assert list(reply_schema("pairwise", ["P1"])["properties"]) == ["rationale", "winner"]
    records = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake", model="never-agree")).run(["q1", "q2"])
    judge = Judge(ModelSettings(backend="fake"))
    judged = asyncio.run(judge.ajudge_one(records[0]))
    assert judged.judgement.rationale == "The chain of thought is judged metric by metric."
    verdict = asyncio.run(judge.acompare(records[0], records[1], ("A", "B")))
    assert verdict.judge_model == "fake:default" and verdict.rubric is not None and verdict.rubric.startswith("judge_pairwise.jinja@")
    rubric = judge.messages(records[0])[0]["content"]
    assert "5: every step serves this query" in rubric and '"rationale"' in rubric
    assert '"P1"' not in rubric  # no example cites a policy the prompt may not call for


# --- the released AIDSAFE CSV ----------------------------------------------------------------

RELEASED = [
    {"prompt": "How can I hotwire a car?", "refined_thoughts": "1. The user asks to steal a car.\n2. Theft is illegal (P4).\n",
     "response": "I can't help with that, but a locksmith can.", "deliberation_log": "Agent 1: ... Agent 2: I agree."},
    {"prompt": "Tips for a first marathon?", "refined_thoughts": "- Benign request.\n- Give training advice.",
     "response": "Train gradually.", "deliberation_log": ""},
]


def _released_csv(path: Path, rows: list[dict[str, str]], thought_column: str = "refined_thoughts") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        columns = ["prompt", thought_column, "response", "deliberation_log"]
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({"prompt": row["prompt"], thought_column: row["refined_thoughts"], "response": row["response"],
                             "deliberation_log": row["deliberation_log"]})
    return path


@pytest.mark.parametrize("column", ["refined_thoughts", "thoughts"])
def test_the_released_csv_imports_as_records_that_can_be_judged(tmp_path: Path, column: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = _released_csv(tmp_path / "released.csv", RELEASED, column)
    out = tmp_path / "imported.jsonl"
    assert main(["import", str(src), "-o", str(out)]) == 0
    assert "imported 2 records" in capsys.readouterr().err
    records = [Record.model_validate_json(line) for line in out.read_text().splitlines()]
    assert [r.id for r in records] == ["1", "2"] and {r.status for r in records} == {"ok"}
    assert [t.text for t in records[0].thoughts] == ["The user asks to steal a car.", "Theft is illegal (P4)."]
    assert records[0].graph == "aidsafe-released" and records[0].stop_reason == "imported"
    assert records[0].origin is not None and records[0].origin.columns == {"deliberation_log": "Agent 1: ... Agent 2: I agree."}
    judged = tmp_path / "judged.jsonl"
    assert main(["judge", str(out), "-o", str(judged), "--backend", "fake", "--no-progress"]) == 0
    assert len([JudgedRecord.model_validate_json(line) for line in judged.read_text().splitlines()]) == 2


def test_a_file_that_is_not_the_released_layout_is_refused_with_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("question,answer\nq,a\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        list(read_released(path, load_policy_set("aidsafe5")))
    assert info.value.line == 1 and "'prompt'" in info.value.message and "'question'" in info.value.message
    empty = _released_csv(tmp_path / "empty.csv", [{**RELEASED[0], "prompt": " "}])
    with pytest.raises(InputError) as info:
        list(read_released(empty, load_policy_set("aidsafe5")))
    assert info.value.line == 2 and info.value.field == "prompt"


def test_split_thoughts_drops_numbering_and_bullets() -> None:
    assert split_thoughts("1. one\n 2) two\n\n- three\n* four\n(5) five") == ["one", "two", "three", "four", "five"]


def test_the_export_log_holds_intents_seed_critiques_and_supersessions(tmp_path: Path) -> None:
    critique = {"intents": "handled", "policies": "P1 applies", "flaws": "thought 1 is wrong", "refusal": "neither"}

    def responder(messages: list[dict[str, str]], kind: str, schema: dict[str, Any]) -> str:
        if kind == "intents":
            return json.dumps({"explicit": ["start a car without its key"], "implicit": ["locked out of own car"]})
        if kind == "draft":
            return json.dumps({"thoughts": [{"text": "seed step", "policies": ["P4"]}], "response": "seed answer"})
        if kind == "deliberation" and "You are agent_1;" in messages[1]["content"]:
            return json.dumps(revision(critique, [{"text": "a better step", "policies": ["P4"]}], "better answer",
                                       superseded=[{"index": 1, "reason": "too vague"}]))
        if kind == "deliberation":
            return json.dumps(agreement(critique))
        return json.dumps({"removed": [{"index": 1, "reason": "deceptive"}]})

    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"), model_factory=lambda s: FakeChatModel(s, responder=responder))
    out = tmp_path / "records.jsonl"
    out.write_text(pipe.run_one("How do I hotwire my car?").model_dump_json() + "\n")
    target = tmp_path / "export.csv"
    assert main(["export", str(out), "-o", str(target)]) == 0
    row = next(csv.DictReader(target.open(encoding="utf-8")))
    log = row["deliberation_log"]
    for expected in ("explicit: start a car without its key", "implicit: locked out of own car", "Seed (first draft):",
                     "1. seed step (P4)", "response: seed answer", "[round 1] agent_1: revises", "flaws: thought 1 is wrong",
                     "supersedes thought 1: too vague", "+ a better step (P4)", "[round 1] agent_2: agrees",
                     "Refiner removed:", "- seed step (deceptive)"):
        assert expected in log, expected
    assert row["refined_thoughts"] == "a better step" and row["response"] == "better answer"
