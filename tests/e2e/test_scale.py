"""Generation at scale, against real HTTP servers on localhost: resume after kill -9 (exactly once,
no call paid twice beyond those in flight), adaptive backoff on 429, an always-failing server,
shards and merge (one configuration digest in every shard's records), a truncated last line, the summary sidecar and the output formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from aidsafe import ModelSettings, Pipeline
from aidsafe.cli import main
from aidsafe.records import Record


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": f"prompt number {i}"}) + "\n" for i in range(n)))
    return path


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _request_key(body: dict) -> str:
    return json.dumps({"messages": body["messages"], "format": body.get("response_format")}, sort_keys=True)


def _cli(url: str, src: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", str(src), "-o", str(out), "--base-url", url, "--model", "m", "--no-progress", *extra]


def test_kill_9_then_resume_is_exactly_once(tmp_path, stub_server):
    stub, url = stub_server
    stub.latency = 0.03
    src, out = _prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "aidsafe", *_cli(url, src, out, "--concurrency", "4")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_run = len(stub.requests)
    done_before = len(out.read_text().splitlines())
    assert 10 <= done_before < 40, "the kill should land mid-run"

    assert main(_cli(url, src, out, "--concurrency", "4")) == 0
    ids = _ids(out)
    assert len(ids) == 40 and len(set(ids)) == 40  # none lost, none duplicated
    for line in out.read_text().splitlines():
        assert Record.model_validate_json(line).status == "ok"
    repeats = sum(n - 1 for n in Counter(_request_key(b) for b in stub.requests).values())
    assert repeats <= 4, f"{repeats} calls paid twice; at most the 4 in flight at the kill may be"
    assert len(stub.requests) - first_run <= 4 * (40 - done_before) + 4
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["records"] == 40 and summary["ok"] == 40
    assert summary["run"]["skipped"] == done_before


def test_a_truncated_last_line_is_repaired(tmp_path, stub_server):
    _, url = stub_server
    src, out = _prompts(tmp_path / "in.jsonl", 6), tmp_path / "out.jsonl"
    assert main(_cli(url, src, out, "--limit", "3")) == 0
    with out.open("a") as fh:
        fh.write('{"id": "p003", "prompt": "prompt num')  # what a crash mid-write leaves
    assert main(_cli(url, src, out)) == 0
    assert sorted(_ids(out)) == [f"p{i:03d}" for i in range(6)]
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["run"]["repaired_last_line"] is True


def test_429_backs_off_and_then_succeeds(tmp_path, stub_server):
    stub, url = stub_server
    stub.fail_first, stub.fail_status, stub.retry_after = 6, 429, "0.05"
    src, out = _prompts(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    assert main(_cli(url, src, out, "--concurrency", "5", "--max-retries", "8")) == 0
    records = [Record.model_validate_json(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 and all(r.status == "ok" for r in records)
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["retries"] == 6
    assert len(stub.requests) == 5 * 4 + 6


def test_adaptive_limit_halves_on_429_and_grows_back():
    import asyncio

    from aidsafe.models.endpoints import Endpoint, Router

    async def scenario() -> list[float]:
        router = Router([Endpoint(url="http://one")], 16, cooldown=0.0)
        (limiter,) = router.states
        seen = [limiter.limit]
        for _ in range(2):
            await router.release(await router.acquire(), "overloaded")
            seen.append(limiter.limit)
        for _ in range(4 + 5):
            await router.release(await router.acquire(), "ok")
        seen.append(limiter.limit)
        return seen

    assert asyncio.run(scenario()) == [16.0, 8.0, 4.0, 6.0]


def test_an_always_failing_server_fails_every_prompt_and_the_exit_code_says_so(tmp_path, stub_server, capsys):
    stub, url = stub_server
    stub.status = 500
    src, out = _prompts(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    assert main(_cli(url, src, out, "--max-retries", "1", "--structured-output", "json_schema")) == 1
    records = [Record.model_validate_json(line) for line in out.read_text().splitlines()]
    assert sorted(r.id for r in records) == [f"p{i:03d}" for i in range(4)]
    assert all(r.status == "failed" and "500" in r.error.message for r in records)
    assert len(stub.requests) == 4 * 2  # one call and one retry each, then recorded
    assert "failed 4" in capsys.readouterr().err


def test_retry_failed_runs_only_the_failed_prompts(tmp_path, stub_server):
    stub, url = stub_server
    src, out = _prompts(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    stub.status = 500
    assert main(_cli(url, src, out, "--max-retries", "0", "--limit", "2", "--structured-output", "json_schema")) == 1
    stub.status = None
    assert main(_cli(url, src, out)) == 0  # resume: the 2 new prompts run, the failed ones stay failed
    statuses = {json.loads(line)["id"]: json.loads(line)["status"] for line in out.read_text().splitlines()}
    assert statuses == {"p000": "failed", "p001": "failed", "p002": "ok", "p003": "ok"}
    before = len(stub.requests)
    assert main(_cli(url, src, out, "--retry-failed")) == 0
    statuses = {json.loads(line)["id"]: json.loads(line)["status"] for line in out.read_text().splitlines()}
    assert statuses == {f"p{i:03d}": "ok" for i in range(4)}
    assert len(stub.requests) - before == 2 * 4


def test_shards_merge_to_the_unsharded_ids(tmp_path, stub_server):
    _, url = stub_server
    src = _prompts(tmp_path / "in.jsonl", 11)
    whole = tmp_path / "whole.jsonl"
    assert main(_cli(url, src, whole)) == 0
    shards = [tmp_path / f"shard{i}.jsonl" for i in range(3)]
    for i, shard in enumerate(shards):
        assert main(_cli(url, src, shard, "--shard", f"{i}/3")) == 0
    assert [len(_ids(s)) for s in shards] == [4, 4, 3]
    merged = tmp_path / "merged.jsonl"
    assert main(["merge", *map(str, shards), "-o", str(merged), "--input", str(src)]) == 0
    assert sorted(_ids(merged)) == sorted(_ids(whole))
    assert main(["merge", *map(str, shards[:2]), "-o", str(tmp_path / "m2.jsonl"), "--input", str(src)]) == 2
    # every shard's records carry the run's configuration digest (the shard is no part of it), the merged file too
    digests = {json.loads(line)["written_by"]["config"] for path in (whole, *shards, merged) for line in path.read_text().splitlines()}
    assert len(digests) == 1
    # a shard run again with other sampling settings is another configuration: merging it is refused
    assert main(_cli(url, src, shards[1], "--shard", "1/3", "--overwrite", "--temperature", "0.9")) == 0
    assert main(["merge", *map(str, shards), "-o", str(tmp_path / "m3.jsonl"), "--input", str(src)]) == 2
    assert not (tmp_path / "m3.jsonl").exists()


def test_bad_shard_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["generate", "x.jsonl", "-o", str(tmp_path / "o.jsonl"), "--shard", "3/3"])
    assert info.value.code == 2


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_output_formats_load_back_with_datasets(tmp_path, stub_server, fmt):
    _, url = stub_server
    src = _prompts(tmp_path / "in.jsonl", 3)
    dest = tmp_path / f"out.{fmt}"
    assert main(_cli(url, src, dest, "--format", fmt)) == 0
    from aidsafe.outputs import records_from_dataset

    import datasets

    ds = datasets.Dataset.from_parquet(str(dest)) if fmt == "parquet" else datasets.load_from_disk(str(dest))
    loaded = records_from_dataset(ds)
    original = [Record.model_validate_json(line) for line in (tmp_path / f"out.{fmt}.jsonl").read_text().splitlines()]
    assert [r.model_dump() for r in loaded] == [r.model_dump() for r in original]


def test_calls_share_one_connection_pool_and_run_concurrently(tmp_path, stub_server):
    stub, url = stub_server
    stub.latency = 0.2
    src, out = _prompts(tmp_path / "in.jsonl", 8), tmp_path / "out.jsonl"
    started = time.monotonic()
    # two model names on one endpoint: two ChatOpenAI clients that must share one connection pool
    settings = ModelSettings(backend="openai", base_url=url, model="m", structured="json_schema")
    pipe = Pipeline("aidsafe", "aidsafe5", settings, role_models={"agent_1": "m2"})
    summary = pipe.generate(src, out, concurrency=8, progress=False)
    elapsed = time.monotonic() - started
    assert summary.ok == 8
    assert {b["model"] for b in stub.requests} == {"m", "m2"}
    assert stub.peak_in_flight >= 6  # the 8 prompts' calls overlap
    assert elapsed < 8 * 4 * 0.2 / 2  # far below the sequential 6.4 s
    assert len(stub.connections) <= 8, f"{len(stub.connections)} connections for 32 calls: the pool is not shared"
