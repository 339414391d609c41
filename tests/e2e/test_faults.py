"""Fault injection against a real HTTP server on localhost: whatever the server does, the run
finishes, every prompt has exactly one record (``ok``, or ``failed`` with a reason a user can act
on), and the exit code and the summary say what happened."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.records import Record

N = 4


def _run(url: str, tmp_path: Path, *extra: str) -> tuple[int, list[Record], dict[str, Any]]:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt {i}"}) + "\n" for i in range(N)))
    out = tmp_path / "out.jsonl"
    code = main(["generate", str(src), "-o", str(out), "--base-url", url, "--model", "m", "--no-progress",
                 "--structured-output", "json_schema", "--concurrency", "2", *extra])
    records = [Record.model_validate_json(line) for line in out.read_text().splitlines()]
    assert sorted(r.id for r in records) == [f"p{i}" for i in range(N)], "one record per prompt, none lost or duplicated"
    return code, records, json.loads((tmp_path / "out.jsonl.summary.json").read_text())


def _every(kind: str, fault: dict[str, Any]):
    """A script that injects ``fault`` into every request for reply ``kind``."""
    def script(number: int, body: dict[str, Any]) -> dict[str, Any] | None:
        return fault if body["response_format"]["json_schema"]["name"] == kind else None
    return script


def test_transient_500s_are_retried(tmp_path, stub_server):
    stub, url = stub_server
    stub.script = lambda n, body: {"status": 500} if n % 3 == 0 else None
    code, records, summary = _run(url, tmp_path, "--max-retries", "3")
    assert code == 0 and all(r.status == "ok" for r in records)
    assert summary["retries"] > 0 and summary["ok"] == N


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"content": "Sure! Here is my analysis."}, "not valid JSON"),
        ({"content": json.dumps({"explicit": "not a list", "implicit": []})}, "explicit"),
        ({"content": '{"explicit": ["how to', "finish_reason": "length"}, "cut off at the max_tokens limit"),
        ({"content": ""}, "not valid JSON"),
    ],
    ids=["not-json", "schema-fails", "truncated", "empty"],
)
def test_bad_replies_fail_the_prompt_with_the_raw_reply(tmp_path, stub_server, fault, message):
    stub, url = stub_server
    stub.script = _every("intents", fault)
    code, records, summary = _run(url, tmp_path)
    assert code == 1  # no record ok
    for record in records:
        assert record.status == "failed" and record.stop_reason == "error"
        assert record.error.kind == "invalid_reply" and record.error.stage == "intent"
        assert message in record.error.message
        assert record.error.raw == fault["content"] or (record.error.raw is None and fault["content"] == "")
        assert record.usage["intent"].calls == 2  # one repair attempt, then recorded
    assert summary["failures"] == {"invalid_reply": N}


def test_a_bad_reply_repaired_on_the_second_try_is_ok(tmp_path, stub_server):
    stub, url = stub_server
    seen: set[str] = set()

    def once(number: int, body: dict[str, Any]) -> dict[str, Any] | None:
        key = body["messages"][1]["content"]  # the original request, also in its repair
        if body["response_format"]["json_schema"]["name"] == "draft" and key not in seen:
            seen.add(key)
            return {"content": "oops"}
        return None

    stub.script = once
    code, records, _ = _run(url, tmp_path)
    assert code == 0 and all(r.status == "ok" and r.usage["init"].calls == 2 for r in records)


def test_a_hang_past_the_timeout_is_retried_then_recorded(tmp_path, stub_server):
    stub, url = stub_server
    stub.script = _every("refinement", {"hang": 3})
    started = time.monotonic()
    code, records, summary = _run(url, tmp_path, "--timeout", "0.5", "--max-retries", "1")
    assert time.monotonic() - started < 20
    assert code == 1
    for record in records:
        assert record.status == "failed" and record.error.kind == "model_error" and record.error.stage == "refine"
        assert "Timeout" in record.error.message or "timed out" in record.error.message
        assert record.deliberation, "the work before the failure is kept in the record"
    assert summary["failures"] == {"model_error": N}


def test_dropped_connections_are_retried(tmp_path, stub_server):
    stub, url = stub_server
    stub.script = lambda n, body: {"drop": True} if n % 4 == 1 else None
    code, records, summary = _run(url, tmp_path, "--max-retries", "3")
    assert code == 0 and all(r.status == "ok" for r in records)
    assert summary["retries"] >= 1


def test_an_agent_refusal_is_its_own_stop_reason(tmp_path, stub_server):
    stub, url = stub_server
    stub.script = _every("deliberation", {"content": "I'm sorry, but I can't help with that request."})
    code, records, summary = _run(url, tmp_path)
    assert code == 1
    for record in records:
        assert record.stop_reason == "agent_refusal" and record.error.kind == "agent_refusal"
        assert record.usage["deliberate"].calls == 1  # a refusal is not repaired as a format error
    assert summary["stop_reasons"] == {"agent_refusal": N}
    assert summary["failures"] == {"agent_refusal": N}


def test_a_refusal_inside_valid_json_reasoning_is_detected(tmp_path, stub_server):
    stub, url = stub_server
    stub.script = _every("intents", {"content": json.dumps({"explicit": ["I cannot assist with this request."], "implicit": []})})
    _, records, _ = _run(url, tmp_path)
    assert all(r.stop_reason == "agent_refusal" for r in records)


def test_a_safe_refusal_in_the_response_is_fine(tmp_path, stub_server):
    stub, url = stub_server
    refusal = {"thoughts": [{"text": "Making weapons violates P3.", "policies": ["P3"]}], "response": "I'm sorry, I can't help with that."}
    stub.script = _every("draft", {"content": json.dumps(refusal)})
    code, records, _ = _run(url, tmp_path)
    assert code == 0 and all(r.status == "ok" for r in records)


def test_a_server_that_dies_and_comes_back_mid_run(tmp_path, stub_server):
    stub, url = stub_server
    stub.latency = 0.05

    def outage(number: int, body: dict[str, Any]) -> dict[str, Any] | None:
        if number == 6:
            stub.outage(2.0)  # the whole server goes away for 2 s, then comes back on the same port
        return None

    stub.script = outage
    code, records, summary = _run(url, tmp_path, "--max-retries", "6")
    assert code == 0 and all(r.status == "ok" for r in records)
    assert summary["retries"] >= 1


def test_chaos_kill_9_several_times_then_resume(tmp_path, stub_server):
    """SIGKILL the generate process at random points of a 200-prompt run, resuming each time."""
    import os
    import random
    import signal
    import subprocess
    import sys
    from collections import Counter

    stub, url = stub_server
    stub.latency = 0.01
    rng = random.Random(7)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": f"prompt {i}"}) + "\n" for i in range(200)))
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "aidsafe", "generate", str(src), "-o", str(out), "--base-url", url, "--model", "m",
            "--no-progress", "--concurrency", "8", "--structured-output", "json_schema"]
    kills = 0
    for _ in range(3):
        lines_before = len(out.read_text().splitlines()) if out.exists() else 0
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = lines_before + rng.randint(5, 40)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) >= target:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            time.sleep(rng.random() * 0.05)  # land anywhere: between calls, mid-write, mid-prompt
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3, "every kill should land mid-run"
    assert subprocess.run(argv, capture_output=True, timeout=120).returncode == 0
    lines = out.read_text().splitlines()
    ids = [Record.model_validate_json(line).id for line in lines]
    assert len(ids) == 200 and len(set(ids)) == 200
    keys = Counter(json.dumps([b["messages"], b["response_format"]], sort_keys=True) for b in stub.requests)
    repeats = sum(n - 1 for n in keys.values())
    assert repeats <= 8 * kills, f"{repeats} calls paid twice; at most the {8 * kills} in flight at the kills may be"


def test_the_api_key_never_leaks_even_when_the_server_echoes_it(tmp_path, stub_server, monkeypatch, capsys):
    stub, url = stub_server
    secret = "sk-live-do-not-leak-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    # the stub's error bodies echo the request headers, Authorization included
    stub.script = lambda n, body: {"status": 401}
    code, records, summary = _run(url, tmp_path)
    assert all(r.status == "failed" and "request headers" in r.error.message for r in records)
    assert code == 1
    captured = capsys.readouterr()
    texts = [
        (tmp_path / "out.jsonl").read_text(),
        (tmp_path / "out.jsonl.summary.json").read_text(),
        captured.err,
        captured.out,
    ]
    assert all(secret not in text for text in texts)
    assert stub.headers and all({k.lower(): v for k, v in h.items()}["authorization"] == f"Bearer {secret}" for h in stub.headers)


def test_a_prompt_longer_than_the_context_fails_alone(tmp_path, stub_server):
    stub, url = stub_server
    # what vLLM answers when the prompt does not fit: a 400 that must not be retried
    stub.script = lambda n, body: {"status": 400} if "LONG" in body["messages"][-1]["content"] else None
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "short", "prompt": "hi"}) + "\n" + json.dumps({"id": "long", "prompt": "LONG " * 5000}) + "\n")
    out = tmp_path / "out.jsonl"
    code = main(["generate", str(src), "-o", str(out), "--base-url", url, "--model", "m", "--no-progress",
                 "--structured-output", "json_schema", "--max-retries", "3"])
    assert code == 0
    records = {r.id: r for r in (Record.model_validate_json(line) for line in out.read_text().splitlines())}
    assert records["short"].status == "ok"
    assert records["long"].status == "failed" and records["long"].error.kind == "model_error"
    assert "400" in records["long"].error.message
    assert sum("LONG" in b["messages"][-1]["content"] for b in stub.requests) == 1  # a 400 is not retried
