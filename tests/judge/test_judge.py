"""The judge with the fake model: scoring, fail-closed parsing, citations, pairwise order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.cli import main
from aidsafe.judge import METRICS, Judge, JudgedRecord, PairVerdict, parse_scores, parse_winner
from aidsafe.policies import load_policy_set


def _records(behaviour: str = "never-agree", graph: str = "aidsafe", n: int = 3):
    pipe = Pipeline(graph, "aidsafe5", ModelSettings(backend="fake", model=behaviour))
    return pipe.run([f"prompt {i}" for i in range(n)])


def _judge(responder) -> Judge:
    return Judge(ModelSettings(backend="fake"), model_factory=lambda s: FakeChatModel(s, responder=responder))


def test_scores_are_parsed_per_metric_and_bad_ones_left_unscored():
    ids = load_policy_set("aidsafe5").ids
    scores, applicable = parse_scores(json.dumps({
        "applicable_policies": ["P3", "Z9"], "relevance": 5, "coherence": "4", "completeness": 0,
        "faithfulness_cot_policy": 4.0, "faithfulness_response_policy": True, "faithfulness_response_cot": 3,
    }), ids)
    assert scores == {"relevance": 5, "coherence": None, "completeness": None, "faithfulness_cot_policy": None,
                      "faithfulness_response_policy": None, "faithfulness_response_cot": 3}
    assert applicable == ["P3"]
    assert parse_scores("no json here", ids) == ({m: None for m in METRICS}, None)


def test_a_judged_record_keeps_the_record_and_adds_scores():
    record = _records(n=1)[0]

    def responder(messages, kind, schema):
        assert kind == "scores" and record.prompt in messages[1]["content"]
        assert schema["properties"]["relevance"]["enum"] == [1, 2, 3, 4, 5]
        return json.dumps({"applicable_policies": ["P1", "P4"], **{m: 4 for m in METRICS}})

    judged = asyncio.run(_judge(responder).ajudge_one(record))
    assert judged.judgement.scores == {m: 4 for m in METRICS} and judged.judgement.unscored == []
    assert judged.model_dump(exclude={"judgement"}) == record.model_dump()
    cit = judged.judgement.citations
    assert cit.applicable == ["P1", "P4"] and cit.coverage == 0.5  # the fake CoT cites P1 only
    assert cit.citing == sum(1 for t in record.thoughts if t.policies) and cit.unknown_ids == []


def test_garbage_leaves_every_metric_unscored_never_a_default():
    record = _records(n=1)[0]
    calls: list[int] = []

    def responder(messages, kind, schema):
        calls.append(len(messages))
        return "The CoT is great, 5/5!"

    judged = asyncio.run(_judge(responder).ajudge_one(record))
    assert judged.judgement.scores == {m: None for m in METRICS}
    assert judged.judgement.unscored == list(METRICS)
    assert "5/5" in (judged.judgement.error or "")
    assert calls == [2, 4]  # one repair call with the error fed back, then unscored
    assert judged.judgement.usage.calls == 2


def test_failed_records_are_kept_and_not_judged():
    record = _records(behaviour="garbage", n=1)[0]
    judged = asyncio.run(_judge(lambda *a: pytest.fail("no call for a failed record")).ajudge_one(record))
    assert judged.status == "failed" and judged.judgement.unscored == list(METRICS)


def test_pairwise_asks_both_orders_and_maps_verdicts_back():
    a = _records(behaviour="never-agree", n=4)
    b = _records(behaviour="agree", graph="single", n=4)
    seen: list[tuple[str, str]] = []

    def prefers_longer(messages, kind, schema):
        user = messages[1]["content"]
        first = user.split("Second chain of thought:")[0]
        second = user.split("Second chain of thought:")[1]
        seen.append((first, second))
        return json.dumps({"winner": "first" if first.count("\n") > second.count("\n") else "second"})

    judge = _judge(prefers_longer)
    verdicts = [asyncio.run(judge.acompare(x, y, ("A", "B"))) for x, y in zip(a, b)]
    assert all(v.winner == "a" and v.verdicts == ["a", "a"] for v in verdicts)  # consistent across orders
    # the first order is randomised per id: both orders were used first for some prompt
    firsts = {("Correction" in f) for f, _ in seen[::2]}
    assert firsts == {True, False}


def test_position_bias_gives_a_tie():
    a, b = _records(n=1)[0], _records(behaviour="agree", graph="single", n=1)[0]
    verdict = asyncio.run(_judge(lambda *args: json.dumps({"winner": "first"})).acompare(a, b, ("A", "B")))
    assert verdict.verdicts in (["a", "b"], ["b", "a"]) and verdict.winner == "tie"
    assert parse_winner("{}") is None and parse_winner('{"winner": "second"}') == "second"


def test_judge_cli_resumes_and_writes_a_sidecar(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"q {i}"}) + "\n" for i in range(4)))
    gen = tmp_path / "gen.jsonl"
    assert main(["generate", str(src), "-o", str(gen), "--backend", "fake", "--no-progress"]) == 0
    out = tmp_path / "judged.jsonl"
    assert main(["judge", str(gen), "-o", str(out), "--backend", "fake", "--no-progress", "--limit", "2"]) == 0
    assert main(["judge", str(gen), "-o", str(out), "--backend", "fake", "--no-progress"]) == 0
    judged = [JudgedRecord.model_validate_json(line) for line in out.read_text().splitlines()]
    assert sorted(j.id for j in judged) == ["x0", "x1", "x2", "x3"]
    summary = json.loads((tmp_path / "judged.jsonl.summary.json").read_text())
    assert summary["records"] == 4 and summary["run"]["skipped"] == 2


def test_judge_cli_pairwise(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"q {i}"}) + "\n" for i in range(3)))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["generate", str(src), "-o", str(a), "--backend", "fake", "--no-progress"]) == 0
    assert main(["generate", str(src), "-o", str(b), "--backend", "fake", "--graph", "single", "--no-progress"]) == 0
    pairs = tmp_path / "pairs.jsonl"
    assert main(["judge", str(a), "--against", str(b), "-o", str(pairs), "--backend", "fake", "--no-progress"]) == 0
    verdicts = [PairVerdict.model_validate_json(line) for line in pairs.read_text().splitlines()]
    assert [v.id for v in sorted(verdicts, key=lambda v: v.id)] == ["x0", "x1", "x2"]
    assert all(v.a == "a.jsonl" and v.b == "b.jsonl" and len(v.verdicts) == 2 for v in verdicts)


def test_a_custom_rubric_with_an_unknown_variable_is_refused(tmp_path):
    from aidsafe.errors import ConfigError

    rubric = tmp_path / "r.jinja"
    rubric.write_text("{% block system %}{{ policies }}{% endblock %}{% block user %}{{ secret }}{% endblock %}")
    with pytest.raises(ConfigError) as info:
        Judge(ModelSettings(backend="fake"), rubric=rubric)
    assert "secret" in str(info.value) and str(rubric) in str(info.value)
