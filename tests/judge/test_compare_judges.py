"""``aidsafe compare`` checks its judges: inputs judged by different judge models or rubric
digests are refused (naming each file and its judge) or, with ``--allow-mixed-judges``, kept in
one group per judge; a file whose records name several judges is refused; the tables name the
judge (fast: hand-built records, the fake backend)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.errors import InputError
from aidsafe.judge import Judge
from aidsafe.judge.comparison import compare
from aidsafe.judge.identity import UNKNOWN, JudgeId, rubric_digest, single_judge
from aidsafe.judge.report import markdown_report
from aidsafe.judge.schema import METRICS, JudgedRecord, PairVerdict
from aidsafe.models import ModelSettings
from aidsafe.records import Record

RUBRIC = "judge_scores.jinja@abc123def456"
OTHER_RUBRIC = "judge_scores.jinja@0123456789ab"


pytestmark = pytest.mark.usefixtures("clean_env")  # no AIDSAFE_* variable of the calling shell changes what a test sees


def record(record_id: str) -> Record:
    return Record.model_validate({
        "id": record_id, "prompt": f"prompt {record_id}", "graph": "aidsafe", "policy_set": {"name": "aidsafe5", "version": "1"},
        "intents": {}, "deliberation": [], "stop_reason": "consensus", "rounds": 1, "thoughts": [], "removed_thoughts": [],
        "response": f"response {record_id}", "models": {}, "usage": {}, "status": "ok",
    })


def judged(record_id: str, score: int = 5, *, model: str = "fake:judge", rubric: str = RUBRIC) -> JudgedRecord:
    judgement = {
        "judge_model": model, "rubric": rubric, "scores": dict.fromkeys(METRICS, score), "unscored": [],
        "citations": {"thoughts": 0, "citing": 0, "share_citing": None},
    }
    return JudgedRecord.model_validate(record(record_id).model_dump() | {"judgement": judgement})


def write(path: Path, items: list[Any]) -> str:
    path.write_text("".join(item.model_dump_json() + "\n" for item in items), encoding="utf-8")
    return str(path)


def two(tmp_path: Path, name: str, score: int, **judge: str) -> str:
    return write(tmp_path / name, [judged("r1", score, **judge), judged("r2", score, **judge)])


def verdict(i: int, model: str | None = "fake:judge", rubric: str | None = "judge_pairwise.jinja@fedcba987654") -> PairVerdict:
    return PairVerdict(id=f"r{i}", a="a.jsonl", b="b.jsonl", winner="a", verdicts=["a", "a"], judge_model=model, rubric=rubric)


# --- the digest -----------------------------------------------------------------------------


def test_the_judge_records_its_model_and_rubric_digest() -> None:
    judge = Judge(ModelSettings(backend="fake"))
    out = asyncio.run(judge.ajudge_one(record("r1")))
    assert out.judgement.judge_model == "fake:default"
    assert rubric_digest(out.judgement.rubric) == judge.rubric.sha256 and len(judge.rubric.sha256) == 12
    assert single_judge([out]) == JudgeId("fake:default", judge.rubric.sha256)


def test_rubric_digest_of_labels() -> None:
    assert rubric_digest(RUBRIC) == "abc123def456"
    assert rubric_digest("rubric.j2") == UNKNOWN and rubric_digest(None) == UNKNOWN and rubric_digest("x@") == UNKNOWN
    # the same digest under another file name is the same rubric
    assert JudgeId.of("m", "a.jinja@abc") == JudgeId.of("m", "b.jinja@abc") != JudgeId.of("m", "a.jinja@abd")


# --- refused ----------------------------------------------------------------------------------


def test_mixed_judge_models_are_refused_naming_each_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = two(tmp_path, "a.jsonl", 5, model="openai:gpt-4o")
    b = two(tmp_path, "b.jsonl", 4, model="openai:gpt-4o-mini")
    assert main(["compare", a, b, "--json", str(tmp_path / "out.json")]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "different judges" in err and "--allow-mixed-judges" in err
    assert f"{a} (a.jsonl): judge model openai:gpt-4o, rubric digest abc123def456 ({RUBRIC})" in err
    assert f"{b} (b.jsonl): judge model openai:gpt-4o-mini, rubric digest abc123def456" in err
    assert captured.out == "" and not (tmp_path / "out.json").exists()


def test_mixed_rubric_digests_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = two(tmp_path, "a.jsonl", 5)
    b = two(tmp_path, "b.jsonl", 4, rubric=OTHER_RUBRIC)
    assert main(["compare", a, b, "--labels", "base", "ours"]) == 2
    err = capsys.readouterr().err
    assert f"{a} (base): judge model fake:judge, rubric digest abc123def456" in err
    assert f"{b} (ours): judge model fake:judge, rubric digest 0123456789ab" in err


def test_the_same_rubric_under_another_file_name_is_the_same_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = two(tmp_path, "a.jsonl", 5)
    b = two(tmp_path, "b.jsonl", 4, rubric="copy-of-rubric.jinja@abc123def456")
    assert main(["compare", a, b]) == 0
    assert "## Differences from a.jsonl" in capsys.readouterr().out


def test_a_file_judged_by_two_judges_is_refused_even_with_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resumed = write(tmp_path / "resumed.jsonl", [judged("r1"), judged("r2", model="openai:other"), judged("r3", model="openai:other")])
    other = two(tmp_path, "b.jsonl", 4)
    assert main(["compare", resumed, other, "--allow-mixed-judges"]) == 2
    err = capsys.readouterr().err
    assert f"{resumed}: its records were judged by 2 different judges" in err
    assert "2 by judge model openai:other, rubric digest abc123def456" in err
    assert "1 by judge model fake:judge, rubric digest abc123def456" in err


def test_a_pairwise_verdict_file_of_two_graders_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = two(tmp_path, "a.jsonl", 5)
    verdicts = write(tmp_path / "verdicts.jsonl", [verdict(1), verdict(2, model="openai:other")])
    assert main(["compare", a, "--pairs", verdicts]) == 2
    err = capsys.readouterr().err
    assert f"{verdicts}: its records were judged by 2 different judges" in err and "openai:other" in err


def test_graders_of_different_verdict_files_stay_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = two(tmp_path, "a.jsonl", 5)
    first = write(tmp_path / "v1.jsonl", [verdict(1), verdict(2)])
    second = write(tmp_path / "v2.jsonl", [verdict(1, model="openai:other"), verdict(2, model="openai:other")])
    assert main(["compare", a, "--pairs", first, second]) == 0
    out = capsys.readouterr().out
    assert "| a.jsonl | b.jsonl | fake:judge / judge_pairwise.jinja@fedcba987654 | 100.0% (2) | 0.0% (0) | 0.0% (0) | 0 | 2 |" in out
    assert "| a.jsonl | b.jsonl | openai:other / judge_pairwise.jinja@fedcba987654 | 100.0% (2) | 0.0% (0) | 0.0% (0) | 0 | 2 |" in out


# --- older files --------------------------------------------------------------------------------


def test_an_older_file_without_a_digest_is_unknown_and_differs_from_a_known_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = two(tmp_path, "old.jsonl", 4, rubric="judge_scores.jinja")
    new = two(tmp_path, "new.jsonl", 5)
    assert main(["compare", old, new]) == 2
    assert f"{old} (old.jsonl): judge model fake:judge, rubric digest unknown (judge_scores.jinja)" in capsys.readouterr().err
    assert main(["compare", old, new, "--allow-mixed-judges"]) == 0
    assert "## Judges: 2 different judges" in capsys.readouterr().out


def test_older_files_of_one_model_without_digests_still_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = two(tmp_path, "old.jsonl", 4, rubric="rubric.j2")
    older = two(tmp_path, "older.jsonl", 5, rubric="rubric.j2")
    assert main(["compare", old, older]) == 0
    out = capsys.readouterr().out
    assert "Judged by judge model fake:judge, rubric digest unknown (rubric.j2)." in out
    # verdicts from before verdicts named their grader read as one grader, "unknown"
    verdicts = write(tmp_path / "verdicts.jsonl", [verdict(1, None, None), verdict(2, None, None)])
    assert main(["compare", old, "--pairs", verdicts]) == 0
    assert "| a.jsonl | b.jsonl | unknown | 100.0% (2) |" in capsys.readouterr().out


# --- named and grouped ------------------------------------------------------------------------------


def test_the_tables_name_the_judge_and_rubric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = two(tmp_path, "a.jsonl", 5)
    b = two(tmp_path, "b.jsonl", 4)
    out_json = tmp_path / "out.json"
    assert main(["compare", a, b, "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    named = f"Judged by judge model fake:judge, rubric digest abc123def456 ({RUBRIC})."
    scores = lines.index("## Judge scores (mean [95% bootstrap CI])")
    assert lines[scores + 2] == named
    differences = next(i for i, line in enumerate(lines) if line.startswith("## Differences from a.jsonl"))
    assert lines[differences + 2] == f"Both sides judged by judge model fake:judge, rubric digest abc123def456 ({RUBRIC})."
    document = json.loads(out_json.read_text(encoding="utf-8"))
    judge = {"judge_model": "fake:judge", "rubric": RUBRIC, "rubric_digest": "abc123def456"}
    assert document["inputs"]["a.jsonl"]["judge"] == judge == document["inputs"]["b.jsonl"]["judge"]
    assert document["judges"] == [{**judge, "inputs": ["a.jsonl", "b.jsonl"], "baseline": "a.jsonl", "differences": document["differences"]}]
    assert document["differences"]["b.jsonl"]["relevance"]["mean_difference"] == -1.0


def test_allow_mixed_judges_groups_by_judge_and_never_subtracts_across(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = two(tmp_path, "a.jsonl", 5)
    b = two(tmp_path, "b.jsonl", 2, model="openai:strict")
    c = two(tmp_path, "c.jsonl", 3)
    plain = write(tmp_path / "plain.jsonl", [record("r1"), record("r2")])
    out_json = tmp_path / "out.json"
    assert main(["compare", a, b, c, plain, "--allow-mixed-judges", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "## Judges: 2 different judges (judge model or rubric digest)" in lines
    assert f"| 1 | fake:judge | abc123def456 | {RUBRIC} | a.jsonl, c.jsonl |" in lines
    assert f"| 2 | openai:strict | abc123def456 | {RUBRIC} | b.jsonl |" in lines
    assert "## Judge scores, judge 1 of 2 (mean [95% bootstrap CI])" in lines
    assert "## Judge scores, judge 2 of 2 (mean [95% bootstrap CI])" in lines
    assert "| Metric | a.jsonl | c.jsonl |" in lines and "| Metric | b.jsonl |" in lines
    assert "Judged by judge model openai:strict, rubric digest abc123def456" in out
    # differences within judge 1 only: c - a; b is never subtracted from a
    assert [line for line in lines if line.startswith("## Differences")] == [
        "## Differences from a.jsonl, judge 1 of 2 (paired over the ids both scored: mean [95% bootstrap CI] (relative gain, n))"
    ]
    assert "b.jsonl − a.jsonl" not in out and "| Metric | c.jsonl − a.jsonl |" in lines
    document = json.loads(out_json.read_text(encoding="utf-8"))
    assert document["baseline"] is None and document["differences"] == {}
    groups = document["judges"]
    assert [(g["judge_model"], g["inputs"], g["baseline"], list(g["differences"])) for g in groups] == [
        ("fake:judge", ["a.jsonl", "c.jsonl"], "a.jsonl", ["c.jsonl"]),
        ("openai:strict", ["b.jsonl"], "b.jsonl", []),
    ]
    assert groups[0]["differences"]["c.jsonl"]["relevance"]["mean_difference"] == -2.0
    assert document["inputs"]["plain.jsonl"]["judge"] is None


def test_the_library_refuses_and_groups_too() -> None:
    loaded: dict[str, list[Record]] = {"A": [judged("r1", model="m1")], "B": [judged("r1", model="m2")]}
    with pytest.raises(InputError, match=r"A: judge model m1.*\n.*B: judge model m2"):
        compare(loaded)
    document = compare(loaded, allow_mixed_judges=True)
    assert [g["inputs"] for g in document["judges"]] == [["A"], ["B"]]
    report = markdown_report(document)
    assert "## Judge scores, judge 1 of 2" in report and "## Differences" not in report



def test_the_plot_of_mixed_judges_names_each_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import aidsafe.cli.compare as compare_cli

    seen: list[tuple[list[str], str | None]] = []
    real = compare_cli.plot_distributions

    def spy(tables: Any, path: Any, title: str | None = None) -> Path:
        seen.append((list(tables), title))
        return real(tables, path, title=title)

    monkeypatch.setattr(compare_cli, "plot_distributions", spy)
    a = two(tmp_path, "a.jsonl", 5)
    b = two(tmp_path, "b.jsonl", 2, model="openai:strict")
    png = tmp_path / "dist.png"
    assert main(["compare", a, b, "--allow-mixed-judges", "--plot", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert seen[-1][0] == ["a.jsonl (fake:judge, abc123def456)", "b.jsonl (openai:strict, abc123def456)"]
    assert main(["compare", a, "--plot", str(png)]) == 0
    assert seen[-1] == (["a.jsonl"], f"judged by judge model fake:judge, rubric digest abc123def456 ({RUBRIC})")
