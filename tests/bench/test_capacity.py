"""The capacity model of ``bench/capacity.py``: its formulas on hand-computed numbers, reading a
run's summary sidecar, the command line, and the errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.capacity import (
    CapacityError,
    RoleLoad,
    Server,
    Workload,
    capacity,
    format_table,
    load_summary,
    main,
    measured_cpu_ms_per_call,
    parse_role,
    workload_from_numbers,
    workload_from_summary,
)

BENCH = Path(__file__).resolve().parents[2] / "bench"


# --- formulas --------------------------------------------------------------------------------


def test_formulas_on_hand_computed_numbers():
    # 6 calls, 9,600 prompt and 3,550 completion tokens per prompt; 2,000 / 20,000 tok/s.
    r = capacity(workload_from_numbers(6, 9600, 3550), Server(2000, 20000), cpu_ms_per_call=3.92,
                 target_prompts=100_000, target_hours=24, headroom=2)
    assert r["decode_seconds_per_prompt"] == pytest.approx(1.775)  # 3550 / 2000
    assert r["prefill_seconds_per_prompt"] == pytest.approx(0.48)  # 9600 / 20000
    assert r["gpu_seconds_per_prompt"] == pytest.approx(2.255)
    assert r["prompts_per_hour_per_replica"] == pytest.approx(1596.4523, rel=1e-6)  # 3600 / 2.255
    assert r["target"]["prompts_per_hour"] == pytest.approx(4166.6667, rel=1e-6)
    assert r["replicas_exact"] == pytest.approx(2.60995, rel=1e-5)  # 4166.67 / 1596.45
    assert r["replicas_needed"] == 3
    assert r["hours_for_target_on_replicas"] == pytest.approx(20.8796, rel=1e-5)  # 100000 / (3 * 1596.45)
    assert r["calls_per_s_fleet"] == pytest.approx(7.982262, rel=1e-6)  # 3 * 1596.45 * 6 / 3600
    assert r["calls_per_s_at_target"] == pytest.approx(6.944444, rel=1e-6)  # 4166.67 * 6 / 3600
    assert r["client_cores_exact"] == pytest.approx(0.0625809, rel=1e-5)  # 7.98 * 3.92 / 1000 * 2
    assert r["client_cores_needed"] == 1
    assert "stream_tps" not in r


def test_prefix_cache_share_only_discounts_prefill():
    r = capacity(workload_from_numbers(6, 9600, 3550), Server(2000, 20000, prefix_cached_share=0.9),
                 cpu_ms_per_call=4, target_prompts=1000, target_hours=1)
    assert r["prefill_seconds_per_prompt"] == pytest.approx(0.048)  # 9600 * 0.1 / 20000
    assert r["decode_seconds_per_prompt"] == pytest.approx(1.775)
    assert r["gpu_seconds_per_prompt"] == pytest.approx(1.823)


def test_rounding_up_is_exact_at_the_boundary():
    one_second = workload_from_numbers(10, 0, 100)  # 100 completion tokens at 100 tok/s: 1 GPU second
    server = Server(decode_tps=100, prefill_tps=1)
    at = capacity(one_second, server, cpu_ms_per_call=50, target_prompts=7200, target_hours=1, headroom=2)
    assert at["prompts_per_hour_per_replica"] == pytest.approx(3600)
    assert at["replicas_needed"] == 2  # exactly 2 replicas' worth: no spurious third
    assert at["calls_per_s_fleet"] == pytest.approx(20)  # 2 * 3600 * 10 / 3600
    assert at["client_cores_exact"] == pytest.approx(2.0)  # 20 * 50 / 1000 * 2
    assert at["client_cores_needed"] == 2
    over = capacity(one_second, server, cpu_ms_per_call=50, target_prompts=7201, target_hours=1, headroom=2.1)
    assert over["replicas_needed"] == 3
    assert over["client_cores_exact"] == pytest.approx(3 * 10 * 50 / 1000 * 2.1)  # 3.15
    assert over["client_cores_needed"] == 4


def test_little_law_for_prompts_in_flight():
    r = capacity(workload_from_numbers(10, 0, 100), Server(100, 1), cpu_ms_per_call=1, target_prompts=7200,
                 target_hours=1, stream_tps=10)
    assert r["seconds_per_prompt_alone"] == pytest.approx(10)  # 100 tokens at 10 tok/s
    assert r["prompts_in_flight_needed"] == pytest.approx(20)  # 2 prompts/s (2 replicas) * 10 s
    assert r["calls_in_flight_per_replica"] == pytest.approx(10)


def test_role_loads_add_up():
    w = Workload({"a": RoleLoad(1, 100, 10), "b": RoleLoad(2.5, 300, 40)}, "test")
    assert (w.calls, w.prompt_tokens, w.completion_tokens) == (3.5, 400, 50)
    assert parse_role("deliberator=3,5400,2100") == ("deliberator", RoleLoad(3, 5400, 2100))
    assert parse_role(" intent = 1,800,150") == ("intent", RoleLoad(1, 800, 150))


# --- the sidecar -----------------------------------------------------------------------------


def _summary(**over):
    data = {
        "records": 4,
        "ok": 3,
        "failed": 1,
        "usage_by_stage": {"whole": {"prompt_tokens": 999, "completion_tokens": 9, "calls": 1}},
        "usage_by_role": {
            "intent": {"prompt_tokens": 3200, "completion_tokens": 600, "calls": 4, "retries": 0, "cached": 0, "truncated": 0},
            "agent_1": {"prompt_tokens": 10000, "completion_tokens": 3000, "calls": 6, "retries": 2, "cached": 1, "truncated": 0},
        },
        "complete": True,
        "config": {"models": {"intent": "openai:mixtral", "deliberate.agent_1": "openai:mixtral"}},
    }
    data.update(over)
    return data


def test_reading_a_sidecar_written_by_the_test(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("", encoding="utf-8")
    sidecar = tmp_path / "out.jsonl.summary.json"
    sidecar.write_text(json.dumps(_summary()), encoding="utf-8")

    data, path = load_summary(out)  # the output's name finds its sidecar
    assert path == sidecar
    w = workload_from_summary(data, source=str(path))
    assert w.records == 4
    assert w.roles["intent"] == RoleLoad(1.0, 800.0, 150.0)  # 4 calls, 3200 and 600 tokens over 4 records
    assert w.roles["agent_1"] == RoleLoad(1.5, 2500.0, 750.0)
    assert (w.calls, w.prompt_tokens, w.completion_tokens) == (2.5, 3300.0, 900.0)
    joined = " | ".join(w.notes)
    assert "1 of 4 records failed" in joined
    assert "1 calls were answered from the response cache" in joined
    assert "2 retries" in joined
    assert "fake" not in joined

    assert load_summary(sidecar)[1] == sidecar  # the sidecar itself


def test_roles_fall_back_to_stages_and_fake_runs_are_flagged():
    w = workload_from_summary(_summary(usage_by_role={}, failed=0, config={"models": {"intent": "fake:default"}}))
    assert list(w.roles) == ["whole"]
    assert w.roles["whole"].prompt_tokens == pytest.approx(999 / 4)
    assert any("fake backend" in n for n in w.notes)
    assert not any("failed" in n for n in w.notes)
    assert not any("embedded" in n for n in w.notes)
    local = workload_from_summary(_summary(config={"models": {"intent": "local:SmolLM2-135M-Instruct.Q4_1.gguf"}}))
    assert any("embedded (local) model" in n for n in local.notes)
    assert not any("fake backend" in n for n in local.notes)


def test_command_line_on_a_sidecar(tmp_path, capsys):
    sidecar = tmp_path / "run.jsonl.summary.json"
    sidecar.write_text(json.dumps(_summary()), encoding="utf-8")
    code = main(["--summary", str(sidecar), "--decode-tps", "900", "--prefill-tps", "33000", "--cpu-ms-per-call", "5",
                 "--target-prompts", "3600", "--target-hours", "1", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    # 900 completion tokens / 900 tok/s + 3300 prompt tokens / 33000 tok/s = 1.1 s per prompt
    assert r["gpu_seconds_per_prompt"] == pytest.approx(1.1)
    assert r["replicas_needed"] == 2  # 3600/h needed, 3272.7/h per replica
    assert r["calls_per_s_fleet"] == pytest.approx(2 * 3600 / 1.1 * 2.5 / 3600)
    assert r["client"]["cpu_ms_per_call_source"] == "given"
    assert r["workload"]["records"] == 4


def test_command_line_table_with_roles(capsys):
    code = main(["--role", "intent=1,800,150", "--role", "deliberator=3,5400,2100", "--decode-tps", "2000",
                 "--prefill-tps", "20000", "--cpu-ms-per-call", "4", "--stream-tps", "25"])
    assert code == 0
    text = capsys.readouterr().out
    assert "assumptions unless you measured them" in text
    assert "total                     4.00        6,200           2,250" in text
    assert "replicas needed                   2" in text  # 1.435 s per prompt: 2509/h per replica, 4167/h needed
    assert "client CPU per call: given" in text
    assert "prompts in flight to keep busy" in text
    assert format_table(capacity(workload_from_numbers(1, 1, 1), Server(1, 1), cpu_ms_per_call=1, target_prompts=1,
                                 target_hours=1)).startswith("workload: given numbers")


def test_default_cpu_figure_comes_from_the_benchmark_results(tmp_path):
    repo = json.loads((BENCH / "results.json").read_text(encoding="utf-8"))
    value, where = measured_cpu_ms_per_call()
    assert value == repo["benchmarks"]["overhead"]["median"]["aidsafe_cpu_ms_per_call"]
    assert "bench/overhead.py" in where
    own = tmp_path / "results.json"
    own.write_text(json.dumps({"benchmarks": {"overhead": {"median": {"aidsafe_cpu_ms_per_call": 7.5}, "repeats": 3,
                                                           "params": {"concurrency": 16},
                                                           "machine": {"date": "2030-01-02T00:00:00", "cores": 8}}}}))
    value, where = measured_cpu_ms_per_call(own)
    assert value == 7.5
    assert "2030-01-02, 8 cores, concurrency 16, median of 3" in where


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"records": 0}, "'records' must be a positive integer"),
    ({"records": True}, "'records' must be a positive integer"),
    ({"records": "4"}, "'records' must be a positive integer"),
    ({"usage_by_role": {}, "usage_by_stage": {}}, "no 'usage_by_role'"),
    ({"usage_by_role": {"intent": [1, 2]}}, "usage_by_role.intent: expected an object"),
    ({"usage_by_role": {"intent": {"prompt_tokens": 1, "completion_tokens": 1}}}, "usage_by_role.intent: 'calls' is missing"),
    ({"usage_by_role": {"intent": {"prompt_tokens": -5, "completion_tokens": 1, "calls": 1}}}, "prompt_tokens must be a number >= 0"),
    ({"usage_by_role": {"intent": {"prompt_tokens": 5, "completion_tokens": 1, "calls": 0}}}, "counts no model calls"),
])
def test_bad_summaries_are_refused(change, message):
    with pytest.raises(CapacityError, match=message):
        workload_from_summary(_summary(**change))


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(CapacityError, match="no such file"):
        load_summary(tmp_path / "missing.jsonl")
    bare = tmp_path / "bare.jsonl"
    bare.write_text("{}\n", encoding="utf-8")
    with pytest.raises(CapacityError, match="without its summary sidecar"):
        load_summary(bare)
    broken = tmp_path / "broken.jsonl.summary.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(CapacityError, match="not JSON"):
        load_summary(broken)
    listed = tmp_path / "list.summary.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CapacityError, match="expected a JSON object"):
        load_summary(listed)
    with pytest.raises(CapacityError, match="not found; give --cpu-ms-per-call"):
        measured_cpu_ms_per_call(tmp_path / "none.json")
    empty = tmp_path / "results.json"
    empty.write_text("{}", encoding="utf-8")
    with pytest.raises(CapacityError, match=r"no benchmarks\.overhead"):
        measured_cpu_ms_per_call(empty)


def test_bad_numbers_are_refused():
    with pytest.raises(CapacityError, match="decode_tps must be a positive number"):
        Server(0, 100)
    with pytest.raises(CapacityError, match="prefill_tps must be a positive number"):
        Server(100, float("nan"))
    with pytest.raises(CapacityError, match=r"prefix_cached_share must be in \[0, 1\)"):
        Server(100, 100, prefix_cached_share=1.0)
    with pytest.raises(CapacityError, match="calls per prompt must be a positive number"):
        workload_from_numbers(0, 10, 10)
    with pytest.raises(CapacityError, match="both 0"):
        workload_from_numbers(1, 0, 0)
    w = workload_from_numbers(1, 10, 10)
    with pytest.raises(CapacityError, match="headroom must be a number >= 1"):
        capacity(w, Server(1, 1), cpu_ms_per_call=1, target_prompts=1, target_hours=1, headroom=0.5)
    with pytest.raises(CapacityError, match="target_hours must be a positive number"):
        capacity(w, Server(1, 1), cpu_ms_per_call=1, target_prompts=1, target_hours=0)
    with pytest.raises(CapacityError, match="stream_tps must be a positive number"):
        capacity(w, Server(1, 1), cpu_ms_per_call=1, target_prompts=1, target_hours=1, stream_tps=-3)
    for text in ("intent", "intent=1,2", "=1,2,3", "intent=a,b,c"):
        with pytest.raises(CapacityError, match="--role"):
            parse_role(text)
    with pytest.raises(CapacityError, match="CALLS must be a number >= 0"):
        parse_role("intent=-1,2,3")
    assert math.isfinite(capacity(w, Server(1, 1), cpu_ms_per_call=1, target_prompts=1, target_hours=1)["gpu_seconds_per_prompt"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--calls", "6", "--role", "a=1,2,3"], "give the workload one way"),
    ([], "give the workload one way"),
    (["--calls", "6", "--prompt-tokens", "100"], "go together"),
    (["--role", "a=1,2,3", "--role", "a=1,2,3"], "given twice"),
    (["--calls", "6", "--prompt-tokens", "100", "--completion-tokens", "10", "--prefix-cached-share", "1.5"], "prefix_cached_share"),
])
def test_command_line_errors_exit_2(argv, message, capsys):
    code = main([*argv, "--decode-tps", "100", "--prefill-tps", "1000", "--cpu-ms-per-call", "4"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("capacity: error:")
    assert message in err
