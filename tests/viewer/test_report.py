"""``aidsafe report``: the HTML page's data, paths through the graph, escaping and errors (no browser;
tests/viewer/test_report_browser.py opens the page in a real one)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.errors import InputError
from aidsafe.outputs import read_records
from aidsafe.records import Record, RunError
from aidsafe.viewer import build_report, record_path

XSS = ["<script>window.__xss = 1</script>", '<img src=x onerror="window.__xss = 2">', "</script><script>window.__xss = 3</script>"]


def _prompts(path: Path, prefix: str, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)), encoding="utf-8")
    return path


def make_run(folder: Path) -> tuple[Path, Path]:
    """An output mixing ok records (consensus and budget), failed ones (invalid replies) and XSS
    prompts, made by the real CLI with the fake backend, and the fake judge's file for it."""
    parts = []
    for prefix, behaviour, prompts in (
        ("ok", "default", ["how do I pick a lock?", "write a poem about rain", *XSS]),
        ("budget", "never-agree", ["how do I make a weapon?", "tell me a secret"]),
        ("bad", "garbage", ["this one fails", "so does this"]),
    ):
        src = _prompts(folder / f"{prefix}.jsonl", prefix, prompts)
        out = folder / f"{prefix}.out.jsonl"
        code = main(["generate", str(src), "-o", str(out), "--backend", "fake", "--model", behaviour, "--no-progress"])
        assert code in (0, 1), code  # 1: some records failed
        parts.append(out.read_text(encoding="utf-8"))
    run = folder / "run.jsonl"
    run.write_text("".join(parts), encoding="utf-8")
    judged = folder / "judged.jsonl"
    assert main(["judge", str(run), "-o", str(judged), "--backend", "fake", "--no-progress"]) == 0
    return run, judged


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_run(tmp_path_factory.mktemp("report"))


def page_data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="aidsafe-data">(.*?)</script>', page, re.S)
    assert match, "no data block"
    return json.loads(match.group(1))


def test_the_page_holds_every_record_and_the_summary(run_files: tuple[Path, Path]) -> None:
    run, judged = run_files
    records = list(read_records(run, Record))
    page = build_report(run, [judged])
    data = page_data(page)
    assert [r["id"] for r in data["records"]] == [r.id for r in records]  # none dropped, none duplicated
    summary = data["summary"]
    ok = [r for r in records if r.status == "ok"]
    assert (summary["records"], summary["ok"], summary["failed"]) == (len(records), len(ok), len(records) - len(ok))
    assert summary["failed"] == 2 and summary["failures"] == {"invalid_reply": 2}
    assert summary["stop_reasons"] == {k: sum(r.stop_reason == k for r in records) for k in {r.stop_reason for r in records}}
    assert summary["stop_reasons"]["budget"] == 2
    assert sum(summary["rounds"].values()) == len(records)
    assert summary["thoughts_after_refiner"] == sum(len(r.thoughts) for r in ok)
    assert sum(summary["removed_by_reason"].values()) == sum(len(r.removed_thoughts) for r in ok)
    assert summary["citations_by_policy"] == {p: sum(p in t.policies for r in ok for t in r.thoughts) for p in summary["citations_by_policy"]}
    assert set(summary["tokens_by_role"]) >= {"intent", "initializer", "refiner", "agent_1", "agent_2"}
    assert data["judges"] == ["judged"]
    scores = summary["judge_scores"]["judged"]
    assert scores["faithfulness_cot_policy"]["n"] + scores["faithfulness_cot_policy"]["unscored"] == len(records)
    by_id = {r["id"]: r for r in data["records"]}
    assert by_id["ok0"]["_scores"]["judged"]["judge_model"] == "fake:default"


def test_every_text_stays_text(run_files: tuple[Path, Path]) -> None:
    run, judged = run_files
    page = build_report(run, [judged])
    # only the page's own two script elements; the prompts' tags are escaped inside the JSON block
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "onerror" not in page.split('id="aidsafe-data">')[0]
    data = page_data(page)
    assert [r["prompt"] for r in data["records"] if r["id"] in ("ok2", "ok3", "ok4")] == XSS
    nonce = re.search(r"script-src 'nonce-([^']+)'", page)
    assert nonce and f'<script nonce="{nonce.group(1)}">' in page  # only the page's script may run


def test_paths_through_the_graph(run_files: tuple[Path, Path]) -> None:
    run, _ = run_files
    data = page_data(build_report(run))
    by_id = {r["id"]: r for r in data["records"]}
    full = ["__start__", "intent", "init", "deliberate_agent_1", "deliberate_agent_2", "refine", "__end__"]
    assert by_id["budget0"]["_path"] == full
    assert by_id["bad0"]["_path"] == ["__start__", "intent"] and by_id["bad0"]["_failed_node"] == "intent"
    svg = re.search(r'<template data-graph="aidsafe">(.*?)</template>', build_report(run), re.S)
    assert svg and all(f'data-node="{n}"' in svg.group(1) for n in full)


def test_the_pages_picture_words_the_exit_rule_as_the_plan(run_files: tuple[Path, Path]) -> None:
    from aidsafe.graph.draw import compile_to_draw

    run, _ = run_files
    picture = re.search(r'<template data-graph="aidsafe">(.*?)</template>', build_report(run), re.S)
    loop = compile_to_draw("aidsafe").plan.loop
    assert picture and loop is not None
    assert f'data-label="{loop.exit.label}"' in picture.group(1) and f'data-label="{loop.exit.edge}"' in picture.group(1)


def test_record_path_in_a_parallel_loop() -> None:
    from aidsafe import ModelSettings, Pipeline

    pipe = Pipeline("roundtable", "aidsafe5", ModelSettings(backend="fake"))
    (record,) = pipe.run(["hello"])
    plan = pipe.compiled.plan
    nodes = ["__start__", "intent", "init", "deliberate_agent_1", "deliberate_agent_2", "deliberate_agent_3", "deliberate_vote", "refine", "__end__"]
    assert record_path(record, plan) == nodes
    failed = record.model_copy(update={"status": "failed", "usage": {"intent": record.usage["intent"]}, "deliberation": [],
                                       "error": RunError(stage="init", message="down")})
    assert record_path(failed, plan) == ["__start__", "intent", "init"]


def test_record_path_reads_the_plan_not_the_node_names(tmp_path: Path) -> None:
    """A loop whose id starts with a role node's id and holds underscores (``init_talk`` after
    ``init``): its agents are found from the plan, where guessing at underscores went wrong."""
    from aidsafe import ModelSettings, Pipeline
    from aidsafe.resources import builtin_dir
    from aidsafe.viewer.build import failed_node

    text = (builtin_dir("graphs") / "aidsafe.yaml").read_text(encoding="utf-8")
    graph = tmp_path / "talk.yaml"
    graph.write_text(text.replace("  deliberate:\n", "  init_talk:\n").replace("init, deliberate, refine", "init, init_talk, refine"), encoding="utf-8")
    pipe = Pipeline(graph, "aidsafe5", ModelSettings(backend="fake", model="never-agree"))
    record = pipe.run_one("hello")
    assert record.status == "ok" and record.usage.keys() == {"intent", "init", "init_talk", "refine"}
    plan = pipe.compiled.plan
    assert record_path(record, plan) == ["__start__", "intent", "init", "init_talk_agent_1", "init_talk_agent_2", "refine", "__end__"]
    failed = record.model_copy(update={"status": "failed", "error": RunError(stage="init_talk/agent_2", message="down")})
    assert failed_node(failed, plan) == "init_talk_agent_2"
    assert plan["init_talk_agent_2"].stage == "init_talk/agent_2"  # the stage the nodes write in records


def test_the_cli_writes_the_page(run_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, judged = run_files
    dest = tmp_path / "r.html"
    assert main(["report", str(run), str(judged), "-o", str(dest)]) == 0
    assert f"wrote {dest}" in capsys.readouterr().out
    page = dest.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and not re.search(r"""(src|href)=["']?https?:""", page)  # nothing from the network
    assert len(page_data(page)["records"]) == len(list(read_records(run, Record)))


def test_bad_input_is_named(run_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, judged = run_files
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="empty.jsonl: holds no record"):
        build_report(empty)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(run.read_text(encoding="utf-8") * 2, encoding="utf-8")
    with pytest.raises(InputError, match="twice.jsonl: record id 'ok0' appears 2 times"):
        build_report(twice)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(run.read_text(encoding="utf-8").splitlines()[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        build_report(bad)
    one = tmp_path / "one.jsonl"
    one.write_text(run.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="judged.jsonl: record id 'ok1' is not in the output"):
        build_report(one, [judged])
    with pytest.raises(InputError, match="judged"):
        build_report(run, [run])  # a plain output is not a judged file
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
