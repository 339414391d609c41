"""Tests of the ``aidsafe`` command line, run in-process with the fake model (no network, no real model)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.records import Record

PROMPTS = [
    {"id": "p-1", "prompt": "How do I pick a lock?"},
    {"id": "p-2", "prompt": "What is the capital of France?"},
    {"id": "p-3", "prompt": "Write a poem about the sea."},
    {"id": "p-4", "prompt": "How do vaccines work?"},
    {"id": "p-5", "prompt": "Explain {{ 7*7 }} and \"quotes\", please."},
]

RECORD_FIELDS = {
    "id",
    "prompt",
    "graph",
    "policy_set",
    "intents",
    "deliberation",
    "stop_reason",
    "rounds",
    "thoughts",
    "removed_thoughts",
    "response",
    "models",
    "usage",
    "status",
}
TURN_FIELDS = {"round", "agent", "agreed", "thoughts", "response", "usage"}


# --- helpers ------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("clean_env")  # no AIDSAFE_* variable of the calling shell changes what a test sees


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)


def read_records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def generate(input_path: Path, output: Path, *extra: str, backend: bool = True) -> int:
    argv = ["generate", str(input_path), "-o", str(output), "--no-progress"]
    if backend:
        argv += ["--backend", "fake"]
    return main(argv + list(extra))


def assert_no_output(path: Path) -> None:
    assert not path.exists() or path.stat().st_size == 0, f"{path} was written before the input was validated"


# --- generate: records and input formats --------------------------------------------


def test_generate_jsonl_writes_one_valid_record_per_prompt(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [p["id"] for p in PROMPTS]
    assert [r["prompt"] for r in records] == [p["prompt"] for p in PROMPTS]
    for line, raw in zip(lines, records):
        Record.model_validate_json(line)
        assert RECORD_FIELDS <= set(raw), RECORD_FIELDS - set(raw)
        assert raw["graph"] == "aidsafe"
        assert raw["status"] == "ok"
        assert set(raw["policy_set"]) == {"name", "version"}
        assert raw["policy_set"]["name"] == "aidsafe5"
        assert set(raw["intents"]) == {"explicit", "implicit"}
        assert raw["intents"]["explicit"], "the fake intent stage gives one explicit intent"
        assert isinstance(raw["deliberation"], list) and raw["deliberation"]
        for turn in raw["deliberation"]:
            assert TURN_FIELDS <= set(turn), TURN_FIELDS - set(turn)
            assert turn["agent"] in {"agent_1", "agent_2"}
        assert raw["stop_reason"] in {"consensus", "budget"}
        assert raw["rounds"] >= 1
        assert raw["thoughts"] and all("policies" in t for t in raw["thoughts"])
        assert isinstance(raw["removed_thoughts"], list)
        assert raw["response"]
        assert set(raw["models"]) >= {"intent", "initializer", "refiner"}
        assert all(v.startswith("fake:") for v in raw["models"].values())
        assert raw["usage"]["intent"]["calls"] >= 1
    assert "records: 5 (ok 5, failed 0)" in capsys.readouterr().err


def test_generate_csv_input(tmp_path: Path) -> None:
    src = tmp_path / "prompts.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt"])
        writer.writerow(["c1", "First, with a comma"])
        writer.writerow(["c2", "Second\nwith a newline"])
    out = tmp_path / "out.jsonl"
    assert generate(src, out) == 0
    records = read_records(out)
    assert [(r["id"], r["prompt"]) for r in records] == [("c1", "First, with a comma"), ("c2", "Second\nwith a newline")]
    assert all(r["status"] == "ok" for r in records)


def test_generate_text_input_ids_are_record_numbers(tmp_path: Path) -> None:
    src = tmp_path / "prompts.txt"
    src.write_text("alpha prompt\n\nbeta prompt\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert generate(src, out) == 0
    assert [(r["id"], r["prompt"]) for r in read_records(out)] == [("1", "alpha prompt"), ("2", "beta prompt")]  # blank lines are no records


def test_generate_hf_dataset_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"id": ["d1", "d2"], "prompt": ["from a dataset", "second row"]}).save_to_disk(str(folder))
    out = tmp_path / "out.jsonl"
    assert generate(folder, out) == 0
    assert [(r["id"], r["prompt"]) for r in read_records(out)] == [("d1", "from a dataset"), ("d2", "second row")]


def test_generate_prompt_field(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "question": "Why is the sky blue?"}, {"id": "q2", "question": "Is it safe?"}])
    out = tmp_path / "out.jsonl"
    assert generate(src, out, "--prompt-field", "question") == 0
    assert [(r["id"], r["prompt"]) for r in read_records(out)] == [("q1", "Why is the sky blue?"), ("q2", "Is it safe?")]


def test_generate_limit(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--limit", "2") == 0
    assert [r["id"] for r in read_records(out)] == ["p-1", "p-2"]


# --- generate: behaviours of the fake model and the graphs ---------------------------


def test_never_agree_runs_the_whole_budget(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--graph", "aidsafe", "--model", "never-agree") == 0
    records = read_records(out)
    assert len(records) == 5
    for r in records:
        assert r["stop_reason"] == "budget"
        assert r["rounds"] == 3
        assert len(r["deliberation"]) == 6
        assert [t["agent"] for t in r["deliberation"]] == ["agent_1", "agent_2"] * 3
        assert [t["round"] for t in r["deliberation"]] == [1, 1, 2, 2, 3, 3]
        assert not any(t["agreed"] for t in r["deliberation"])


def test_agree_stops_at_first_round(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--model", "agree") == 0
    for r in read_records(out):
        assert r["stop_reason"] == "consensus"
        assert r["rounds"] == 1
        assert r["deliberation"][0]["agreed"] is True


def test_garbage_model_fails_every_record_but_keeps_them(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--model", "garbage") == 1
    records = read_records(out)
    assert [r["id"] for r in records] == [p["id"] for p in PROMPTS]
    for line, r in zip(out.read_text(encoding="utf-8").splitlines(), records):
        Record.model_validate_json(line)
        assert r["status"] == "failed"
        assert r["stop_reason"] == "error"
        assert r["error"]["stage"] == "intent"
        assert r["error"]["raw"] == "this is { not json"
        assert r["error"]["message"]
    assert "ok 0, failed 5" in capsys.readouterr().err


def test_llamaguard3_policies_cite_s_ids(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--policies", "llamaguard3", "--model", "never-agree") == 0
    records = read_records(out)
    cited: set[str] = set()
    for r in records:
        assert r["policy_set"]["name"] == "llamaguard3"
        for thought in r["thoughts"]:
            cited.update(thought["policies"])
        for turn in r["deliberation"]:
            for thought in turn["thoughts"]:
                cited.update(thought["policies"])
        assert r["faults"] == []
    assert cited == {"S1"}


def test_single_graph_has_no_loop(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--graph", "single") == 0
    for r in read_records(out):
        assert r["graph"] == "single"
        assert r["stop_reason"] == "no_loop"
        assert r["rounds"] == 0
        assert r["deliberation"] == []
        assert r["status"] == "ok" and r["response"]


def test_roundtable_graph_agents(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--graph", "roundtable", "--model", "never-agree", "--limit", "2") == 0
    for r in read_records(out):
        assert r["graph"] == "roundtable"
        agents = {t["agent"] for t in r["deliberation"]}
        assert agents == {"agent_1", "agent_2", "agent_3"}
        assert r["stop_reason"] == "budget" and r["rounds"] == 2


def test_env_vars_replace_flags(tmp_path: Path, prompts_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDSAFE_BACKEND", "fake")
    monkeypatch.setenv("AIDSAFE_MODEL", "agree")
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, backend=False) == 0
    records = read_records(out)
    assert len(records) == 5
    for r in records:
        assert set(r["models"].values()) == {"fake:agree"}
        assert r["stop_reason"] == "consensus" and r["rounds"] == 1


def test_flag_overrides_env_var(tmp_path: Path, prompts_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDSAFE_BACKEND", "fake")
    monkeypatch.setenv("AIDSAFE_MODEL", "agree")
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--model", "never-agree", "--limit", "1", backend=False) == 0
    (r,) = read_records(out)
    assert r["stop_reason"] == "budget"
    assert set(r["models"].values()) == {"fake:never-agree"}


# --- generate: existing outputs, bad inputs ------------------------------------------


def test_refuses_to_resume_into_a_file_that_is_not_records(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    assert generate(prompts_file, out) == 2
    err = capsys.readouterr().err
    assert f"{out}:1:" in err and "--overwrite" in err
    assert out.read_text(encoding="utf-8") == "precious\n"
    assert generate(prompts_file, out, "--overwrite") == 0
    assert [r["id"] for r in read_records(out)] == [p["id"] for p in PROMPTS]


def test_rerun_resumes_and_adds_nothing_twice(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--limit", "2") == 0
    first = out.read_text(encoding="utf-8")
    assert generate(prompts_file, out) == 0
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == sorted(p["id"] for p in PROMPTS)
    assert out.read_text(encoding="utf-8").startswith(first)


def test_empty_existing_output_is_not_refused(tmp_path: Path, prompts_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.touch()
    assert generate(prompts_file, out, "--limit", "1") == 0
    assert len(read_records(out)) == 1


def test_invalid_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "fine"}\n{"prompt": "fine too"}\n{not json\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert generate(src, out) == 2
    err = capsys.readouterr().err
    assert f"{src}:3:" in err
    assert "invalid JSON" in err
    assert_no_output(out)


def test_missing_prompt_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"question": "where is the prompt?"}])
    out = tmp_path / "out.jsonl"
    assert generate(src, out) == 2
    err = capsys.readouterr().err
    assert f"{src}:2:" in err
    assert "prompt" in err and "--prompt-field" in err
    assert_no_output(out)


def test_empty_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert generate(src, out) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "no prompts" in err
    assert_no_output(out)


def test_bad_input_keeps_existing_output_with_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "ok"}\n[1, 2]\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("earlier run\n", encoding="utf-8")
    assert generate(src, out, "--overwrite") == 2
    assert f"{src}:2:" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "earlier run\n"


def test_bad_graph_file(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = tmp_path / "broken.yaml"
    graph.write_text(
        "schema: aidsafe.graph/v1\n"
        "name: broken\n"
        "roles:\n"
        "  single:\n"
        "    template: single.jinja\n"
        "    reply: draft\n"
        "nodes:\n"
        "  single:\n"
        "    role: nosuch\n"
        "flow: [single]\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--graph", str(graph)) == 2
    err = capsys.readouterr().err
    assert f"{graph}:9:" in err
    assert "nosuch" in err
    assert_no_output(out)


def test_unknown_graph_name(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert generate(prompts_file, out, "--graph", "no-such-graph") == 2
    err = capsys.readouterr().err
    assert "no-such-graph" in err
    for name in ("aidsafe", "roundtable", "single"):
        assert name in err
    assert_no_output(out)


def test_output_is_required(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(prompts_file), "--backend", "fake", "--no-progress"]) == 2
    assert "-o/--output" in capsys.readouterr().err


# --- graph ----------------------------------------------------------------------------


def test_graph_mermaid_aidsafe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "aidsafe", "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    for node in ("intent", "init", "deliberate_agent_1", "deliberate_agent_2", "refine"):
        assert node in out
    assert "first_agree or budget of 3 rounds" in out
    assert "deliberate_vote" not in out


def test_graph_mermaid_roundtable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "roundtable"]) == 0
    out = capsys.readouterr().out
    assert "deliberate_vote" in out
    assert "deliberate_agent_3" in out


def test_graph_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "aidsafe", "--format", "json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["schema"] == "aidsafe.graph/v1"
    assert spec["name"] == "aidsafe"
    assert spec["flow"] == ["intent", "init", "deliberate", "refine"]


def test_graph_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "graph.mmd"
    assert main(["graph", "single", "-o", str(target)]) == 0
    assert capsys.readouterr().out == ""
    text = target.read_text(encoding="utf-8")
    assert "graph TD" in text and "single" in text


def test_graph_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "roundtable" in err


# --- render ---------------------------------------------------------------------------


def test_render_text(capsys: pytest.CaptureFixture[str]) -> None:
    prompt = "What is {{ 7*7 }}?"
    assert main(["render", prompt, "--role", "agent_1", "--policies", "llamaguard3"]) == 0
    out = capsys.readouterr().out
    assert prompt in out, "the prompt must be inserted verbatim, never rendered as a template"
    assert "49" not in out
    assert "[S1]" in out
    assert "===== system =====" in out and "===== user =====" in out
    assert out.index("===== system =====") < out.index("===== user =====")
    assert "agent_1" in out


def test_render_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "hello there", "--role", "agent_1", "--policies", "llamaguard3", "--json"]) == 0
    messages = json.loads(capsys.readouterr().out)
    assert isinstance(messages, list) and len(messages) == 2
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "hello there" in messages[1]["content"]
    assert "[S14]" in messages[0]["content"]


def test_render_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "x", "--role", "agent_1", "--policies", "llamaguard3", "--schema"]) == 0
    out = capsys.readouterr().out
    head, sep, schema_text = out.partition("===== schema =====\n")
    assert sep, out
    schema = json.loads(schema_text)
    from aidsafe.kinds.generation import revision_schema

    verdict = revision_schema(schema)  # the disagreeing verdict: where new thoughts cite policies
    enum = verdict["properties"]["thoughts"]["items"]["properties"]["policies"]["items"]["enum"]
    assert enum == [f"S{i}" for i in range(1, 15)]
    assert schema["required"] == ["critique", "verdict"]  # the critique before the verdict
    assert verdict["required"] == ["agree", "superseded", "thoughts", "response"]


def test_render_prompt_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "prompt.txt"
    src.write_text("a prompt kept in a file", encoding="utf-8")
    assert main(["render", f"@{src}", "--role", "intent"]) == 0
    assert "a prompt kept in a file" in capsys.readouterr().out


def test_render_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "x", "--role", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err
    for role in ("intent", "initializer", "agent_1", "agent_2", "refiner"):
        assert role in err


# --- validate -------------------------------------------------------------------------


def test_validate_with_input(prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--graph", "roundtable", "--policies", "llamaguard3", "--input", str(prompts_file)]) == 0
    out = capsys.readouterr().out
    assert "5 prompts" in out
    assert "roundtable" in out and "llamaguard3" in out
    assert out.rstrip().endswith("ok")


def test_validate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "a"}\nnot json\n', encoding="utf-8")
    assert main(["validate", "--input", str(src)]) == 2
    assert f"{src}:2:" in capsys.readouterr().err


# --- export ---------------------------------------------------------------------------


def test_export_aidsafe_csv(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    bad = tmp_path / "bad.jsonl"
    assert generate(prompts_file, good, "--model", "never-agree") == 0
    assert generate(prompts_file, bad, "--model", "garbage", "--limit", "2") == 1
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(good.read_text(encoding="utf-8") + bad.read_text(encoding="utf-8"), encoding="utf-8")
    capsys.readouterr()

    target = tmp_path / "out.csv"
    assert main(["export", str(mixed), "--format", "aidsafe-csv", "-o", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "prompt,refined_thoughts,response,deliberation_log"
    with target.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    records = read_records(good)
    assert [row["prompt"] for row in rows] == [p["prompt"] for p in PROMPTS]
    for row, record in zip(rows, records):
        assert row["response"] == record["response"]
        assert row["refined_thoughts"].splitlines() == [t["text"] for t in record["thoughts"]]
        assert "[round 3] agent_2" in row["deliberation_log"]
    err = capsys.readouterr().err
    assert "skipped 2" in err


def test_export_rejects_non_record_line(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    assert generate(prompts_file, good, "--limit", "2") == 0
    with good.open("a", encoding="utf-8") as fh:
        fh.write('{"prompt": "not a record"}\n')
    capsys.readouterr()
    target = tmp_path / "out.csv"
    assert main(["export", str(good), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{good}:3:" in err
    assert "not an aidsafe record" in err
    assert not target.exists()


# --- the entry point ------------------------------------------------------------------


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDSAFE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "aidsafe", "generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in read_records(out)] == ["p-1", "p-2"]
    assert "records: 2 (ok 2, failed 0)" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "aidsafe", "graph", "nope"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2
    assert "available: aidsafe, ear_whisperer, init_only, roundtable, single" in bad.stderr


# --- regressions: bugs found while writing these tests ----------------------------------------------


def test_bug_env_backend_not_checked_against_choices(tmp_path: Path, prompts_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDSAFE_BACKEND", "bogus")
    out = tmp_path / "out.jsonl"
    try:
        code = generate(prompts_file, out, backend=False)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert_no_output(out)


def test_bug_env_bad_int_crashes(tmp_path: Path, prompts_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDSAFE_LIMIT", "abc")
    with pytest.raises(SystemExit) as info:
        generate(prompts_file, tmp_path / "out.jsonl")
    assert info.value.code == 2


def test_bug_unknown_fake_behaviour_not_rejected_up_front(tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    code = generate(prompts_file, out, "--model", "bogus")
    assert code == 2
    assert "bogus" in capsys.readouterr().err
    assert_no_output(out)


def test_bug_shared_output_env_var_clobbers_records(tmp_path: Path, prompts_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv("AIDSAFE_OUTPUT", str(records))
    assert main(["generate", str(prompts_file), "--backend", "fake", "--no-progress", "--limit", "1"]) == 0
    before = records.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["graph", "aidsafe"]) == 0
    assert records.read_text(encoding="utf-8") == before
    assert "graph TD" in capsys.readouterr().out


def test_generate_tunes_the_gc_only_as_its_own_process(tmp_path):
    import gc

    from aidsafe.cli.generate import tune_gc

    before = gc.get_threshold()
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "How do I bake bread?"}\n', encoding="utf-8")
    assert main(["generate", str(src), "-o", str(tmp_path / "out.jsonl"), "--backend", "fake", "--no-progress"]) == 0
    assert gc.get_threshold() == before  # main([...]) from a program leaves the GC alone
    try:
        tune_gc()
        assert gc.get_threshold() == (10_000, 20, 20) and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_import_freezes_its_objects_only_as_the_aidsafe_command():
    import subprocess
    import sys

    from aidsafe._startup import launched_as_cli

    assert launched_as_cli("-m", ["python", "-X", "importtime", "-m", "aidsafe", "generate"])
    assert launched_as_cli("-m", ["python", "-m", "aidsafe.cli"])
    assert launched_as_cli("/usr/local/bin/aidsafe") and launched_as_cli(r"C:\venv\Scripts\aidsafe.exe")
    assert not launched_as_cli("-m", ["python", "-m", "myjob", "aidsafe"])  # another program run with -m
    assert not launched_as_cli("-m", ["python", "-m", "aidsafe_extras"])
    assert not launched_as_cli("-c") and not launched_as_cli("/usr/bin/pytest") and not launched_as_cli("") and not launched_as_cli("aidsafe.py")
    probe = "import gc, sys; {} import aidsafe; print(gc.get_freeze_count(), gc.isenabled())"
    as_command = subprocess.run([sys.executable, "-c", probe.format("sys.argv[0] = '-m'; sys.orig_argv[1:] = ['-m', 'aidsafe'];")],
                                capture_output=True, text=True, check=True)
    frozen, enabled = as_command.stdout.split()
    assert int(frozen) > 10_000 and enabled == "True"  # python -m aidsafe: the import's objects are frozen, the collector back on
    as_library = subprocess.run([sys.executable, "-c", probe.format("")], capture_output=True, text=True, check=True)
    assert as_library.stdout.split() == ["0", "True"]  # imported by a program: nothing frozen
