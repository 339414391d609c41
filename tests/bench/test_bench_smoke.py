"""Smoke test of the benchmarks in ``bench/``: the simulated server (``aidsafe.testing``), ``prefix``,
and a tiny run; the example of ``aidsafe.testing``'s docstring, run as written; ``bench`` run as files.

Fast (a few seconds): the full benchmarks are run by hand, ``python bench/run.py all``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import aidsafe.testing
from aidsafe.testing import SimServer, minimal_instance
from bench.common import ROLES, make_pipeline, make_prompts, run_aidsafe, write_prompts
from bench.prefix import prefix_shares

ROOT = Path(__file__).resolve().parents[2]


def test_prefix_shares_are_positive():
    shares = prefix_shares(make_pipeline(), make_prompts(12))
    assert set(shares) == set(ROLES)
    for role, s in shares.items():
        assert 0 < s["share_words"] <= 1 and 0 < s["share_chars"] <= 1, role
        assert s["common_prefix_words"] > 0


def test_sim_server_and_a_five_prompt_run_through_aidsafe(tmp_path):
    started = time.perf_counter()
    inp = write_prompts(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    with SimServer(latency=0.0, process=True) as server:
        result = run_aidsafe(server, inp, out, concurrency=5)
        stats = server.stats()
    lines = [line for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == 5
    assert all(json.loads(line)["status"] == "ok" for line in lines)
    assert result["calls"] == 20 == stats["requests"]  # intent, init, agent_1 (agrees), refine
    assert stats["by_kind"] == {"intents": 5, "draft": 5, "deliberation": 5, "refinement": 5}
    assert result["wall_s"] > 0 and result["cpu_s"] > 0 and result["calls_per_s"] > 0 and result["cpu_ms_per_call"] > 0
    assert time.perf_counter() - started < 20


def test_a_benchmark_run_sends_every_call_to_the_server_even_for_repeated_prompts(tmp_path):
    """The response cache is off in benchmark runs: a repeated prompt is answered by the server
    again, so calls/s counts every call (with the cache on, efficiency read about 3% low)."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "How do I store bleach safely?"}) + "\n" for i in range(4)))
    with SimServer(latency=0.0, process=True) as server:
        result = run_aidsafe(server, inp, tmp_path / "out.jsonl", concurrency=2)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert sum(u["cached"] for r in records for u in r["usage"].values()) == 0
    assert result["calls"] == 16


def test_cli_runs_one_benchmark_and_prints_its_rows(capsys):
    from bench import run

    results = run.main(["prefix", "--repeats", "1", "--prefix-prompts", "5", "--no-write"])
    assert list(results) == ["prefix"] and results["prefix"]["met"] is True
    table = capsys.readouterr().out
    assert table.count("| prefix (5 prompts) |") == len(ROLES)


def test_the_baselines_send_the_same_requests_as_aidsafe():
    from bench.baselines import rendered_calls

    messages, formats = rendered_calls(make_prompts(2))
    assert len(messages) == 2 and set(messages[0]) == set(formats) == set(ROLES)
    refine = formats["refiner"]["json_schema"]["schema"]["properties"]["removed"]
    assert refine["items"]["properties"]["index"]["enum"] == [1] and refine["maxItems"] == 0
    assert messages[0]["intent"] == make_pipeline().messages("intent", make_prompts(2)[0])


def test_sim_server_answers_any_other_schema_with_a_valid_instance():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "pet": {"$ref": "#/$defs/Pet"},
                       "tags": {"type": "array", "items": {"type": "string"}}, "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["name", "age", "pet", "tags"],
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}}}},
    }
    assert minimal_instance(schema) == {"name": "x", "age": 0, "pet": {"kind": "cat", "ok": False}, "tags": []}


def test_peer_benchmark_runs_whole_processes_and_loses_no_record(tmp_path):
    """The bare client and aidsafe's CLI as whole processes, two sizes: the figures the table is built from."""
    from bench import peers

    result = peers.bench(sizes=[4, 12], graphs=["single"], clients=["bare", "aidsafe"], concurrency=4, latency=0.05,
                         repeats=1, peers_python=sys.executable)
    runs = result["runs"]
    assert {(r["client"], r["prompts"]) for r in runs} == {("bare", 4), ("bare", 12), ("aidsafe", 4), ("aidsafe", 12)}
    for r in runs:
        assert r["rc"] == 0, r.get("stderr_tail")
        assert r["records"] == r["prompts"] == r["calls"]  # one structured call per prompt, one record each
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and 0 < r["efficiency"] < 1
    rows = {row["client"]: row for row in result["summary"]}
    assert rows["bare"]["cpu_vs_bare"] == 1.0 and rows["aidsafe"]["marginal_between"] == [4, 12]
    assert rows["aidsafe"]["sizes"][12]["lost"] == 0
    assert "| single | aidsafe | 12 |" in peers.table(result)


def test_clients_benchmark_splits_one_job_over_processes_and_endpoints(tmp_path):
    """Two shard processes over two simulated endpoints: every prompt once, the figures from the servers' window."""
    import argparse

    from bench import clients

    args = argparse.Namespace(clients_levels="4", client_processes="1,2", endpoint_count=2, latency=0.05, repeats=1)
    result = clients.measure(args, tmp_path, {})
    level = result["levels"]["4"]
    assert set(level) == {"1", "2"}
    for p, fig in level.items():
        run = fig["runs"][0]
        assert run["records"] == 8 and run["calls"] == 32, p  # 2 x 4 prompts, 4 calls each, nothing lost or run twice
        assert min(run["per_endpoint_calls"]) > 0 and 0 < fig["efficiency"] <= 1.05 and fig["cpu_ms_per_call"] > 0
    assert len(clients.rows(result)) == 2



def _docstring_example(doc: str) -> str:
    """The first literal block (``::``) of a docstring, dedented."""
    block = doc.split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def test_the_aidsafe_testing_example_runs_as_written(tmp_path, monkeypatch):
    """A user's own graph and policy pack through ``aidsafe generate --base-url`` at the simulated server."""
    assert aidsafe.testing.__doc__ is not None
    example = _docstring_example(aidsafe.testing.__doc__)
    assert "SimServer() as server" in example and '"--base-url", server.url' in example
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "aidsafe.testing example", "exec"), {"__name__": "example"})
    assert (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("argv", [["bench/run.py"], ["-m", "bench.run"], ["bench/peers.py"], ["-m", "aidsafe.testing"]])
def test_bench_runs_as_a_file_and_as_a_module(argv):
    """``bench`` is a package: a documented ``python bench/X.py`` still runs, from any folder, as does ``python -m``."""
    absolute = [str(ROOT / a) if a.endswith(".py") else a for a in argv]
    cwd = ROOT if "-m" in argv else ROOT.parent  # a file runs from anywhere; -m bench.run from the repository's root
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, *absolute, "--help"], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.match(r"usage: ", done.stdout)


def test_no_module_of_bench_reaches_for_sys_path():
    for path in sorted((ROOT / "bench").glob("*.py")):
        assert "sys.path.insert" not in path.read_text(encoding="utf-8"), path.name


def test_the_simulated_server_scripts_faults_and_records_requests():
    """In this process: a script's fault, then the normal schema-aware reply; requests, headers and counts kept."""
    import httpx

    schema = {"type": "object", "properties": {"explicit": {"type": "array"}, "implicit": {"type": "array"}}}
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "intents", "schema": schema}}}
    with SimServer(latency=0.01) as server:
        server.script = lambda number, _body: {"status": 503, "message": "busy"} if number == 1 else None
        first = httpx.post(f"{server.url}/chat/completions", json=body, headers={"X-Test": "1"})
        second = httpx.post(f"{server.url}/chat/completions", json=body)
        models = httpx.get(f"{server.url}/models").json()
        stats = server.stats()
    assert first.status_code == 503 and first.json()["error"]["message"] == "busy"
    assert second.status_code == 200
    assert set(json.loads(second.json()["choices"][0]["message"]["content"])) == {"explicit", "implicit"}
    assert len(server.requests) == 2 and server.headers[0]["X-Test"] == "1"
    assert stats["by_kind"] == {"intents": 1} and models["data"][0]["id"] == "sim"
