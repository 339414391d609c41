"""Smoke test of the benchmarks in ``bench/``: the simulated server, ``prefix``, and a tiny run.

Fast (a few seconds): the full benchmarks are run by hand, ``python bench/run.py all``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from common import ROLES, make_pipeline, make_prompts, run_aidsafe, write_prompts  # noqa: E402
from prefix import prefix_shares  # noqa: E402
from sim_server import SimServer  # noqa: E402


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
    with SimServer(latency=0.0) as server:
        result = run_aidsafe(server, inp, out, concurrency=5)
        stats = server.stats()
    lines = [line for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == 5
    assert all(json.loads(line)["status"] == "ok" for line in lines)
    assert result["calls"] == 20 == stats["requests"]  # intent, init, agent_1 (agrees), refine
    assert stats["by_kind"] == {"intents": 5, "draft": 5, "deliberation": 5, "refinement": 5}
    assert result["wall_s"] > 0 and result["cpu_s"] > 0 and result["calls_per_s"] > 0 and result["cpu_ms_per_call"] > 0
    assert time.perf_counter() - started < 20


def test_cli_runs_one_benchmark_and_prints_its_rows(capsys):
    import run

    results = run.main(["prefix", "--repeats", "1", "--prefix-prompts", "5", "--no-write"])
    assert list(results) == ["prefix"] and results["prefix"]["met"] is True
    table = capsys.readouterr().out
    assert table.count("| prefix (5 prompts) |") == len(ROLES)


def test_the_baselines_send_the_same_requests_as_aidsafe():
    from baselines import rendered_calls

    messages, formats = rendered_calls(make_prompts(2))
    assert len(messages) == 2 and set(messages[0]) == set(formats) == set(ROLES)
    refine = formats["refiner"]["json_schema"]["schema"]["properties"]["removed"]
    assert refine["items"]["properties"]["index"]["enum"] == [1] and refine["maxItems"] == 0
    assert messages[0]["intent"] == make_pipeline().messages("intent", make_prompts(2)[0])
