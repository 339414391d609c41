"""Several endpoints for one model (routing by load and weight, an adaptive limit each, draining a
dead one) and 429/503 as backpressure, against real HTTP servers on localhost."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.errors import ConfigError
from aidsafe.models.endpoints import Endpoint, Router, load_endpoints
from aidsafe.records import Record


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": f"question {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def _generate(tmp_path: Path, n: int, *options: str) -> tuple[int, list[Record], dict[str, Any]]:
    src, out = _prompts(tmp_path / "in.jsonl", n), tmp_path / "out.jsonl"
    code = main(["generate", str(src), "-o", str(out), "--model", "served-model", "--structured-output", "json_schema", "--no-progress", *options])
    records = [Record.model_validate_json(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return code, records, json.loads((tmp_path / "out.jsonl.summary.json").read_text(encoding="utf-8"))


def test_calls_go_to_the_least_loaded_endpoint_by_weight() -> None:
    async def scenario() -> dict[str, int]:
        router = Router([Endpoint(url="http://a", max_in_flight=4), Endpoint(url="http://b", weight=3, max_in_flight=12)], 256)
        taken = [await router.acquire() for _ in range(16)]  # every slot of both
        counts = {s.endpoint.url: sum(t is s for t in taken) for s in router.states}
        waiter = asyncio.ensure_future(router.acquire())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # both full: the call waits for a slot anywhere
        await router.release(taken[0], "ok")
        freed = await asyncio.wait_for(waiter, 1)
        assert freed is taken[0]
        return counts

    assert asyncio.run(scenario()) == {"http://a": 4, "http://b": 12}

    async def balanced() -> list[str]:
        router = Router([Endpoint(url="http://a"), Endpoint(url="http://b", weight=3)], 16)
        return [(await router.acquire()).endpoint.url for _ in range(8)]

    assert asyncio.run(balanced()).count("http://b") == 6  # in flight relative to limit x weight stays equal: 6/48 = 2/16


def test_a_drained_endpoint_comes_back_one_call_at_a_time() -> None:
    async def scenario() -> None:
        router = Router([Endpoint(url="http://a"), Endpoint(url="http://b")], 4, drain_base=0.2)
        a, b = router.states
        slot = await router.acquire()
        assert slot is a
        assert await router.release(slot, "down") is True  # drained, and b is up: the call goes elsewhere
        assert a.drained == 1 and not router.stats()["http://a"]["up"]
        assert [await router.acquire() for _ in range(4)] == [b] * 4
        await asyncio.sleep(0.25)
        probe = await router.acquire()
        assert probe is a and a.limit == 1  # probed with one call
        await router.release(probe, "ok")
        assert a.limit == 2  # and grows back on success

    asyncio.run(scenario())


def test_several_base_urls_share_the_work(tmp_path: Path, stub_servers: list[tuple[Any, str]]) -> None:
    for stub, _ in stub_servers:
        stub.latency = 0.02
    urls = [url for _, url in stub_servers]
    code, records, summary = _generate(tmp_path, 30, *(x for url in urls for x in ("--base-url", url)), "--concurrency", "12")
    assert code == 0 and len(records) == 30 and all(r.status == "ok" for r in records)
    served = [len(stub.requests) for stub, _ in stub_servers]
    assert sum(served) == 30 * 4 and min(served) >= 0.2 * sum(served), served
    figures = summary["run"]["endpoints"]
    assert set(figures) == set(urls) and [figures[u]["calls"] for u in urls] == served
    # the client's CPU over the run is in the summary: more than nothing, less than the run's wall time x cores
    assert 0 < summary["run"]["cpu_seconds"] < summary["run"]["seconds"] * (os.cpu_count() or 1)
    assert all(figures[u]["up"] and figures[u]["overloaded"] == 0 for u in urls)


def test_a_dead_endpoint_is_drained_and_its_work_goes_elsewhere(tmp_path: Path, stub_servers: list[tuple[Any, str]]) -> None:
    (alive, a), (dead, b), (other, c) = stub_servers
    for stub in (alive, dead, other):
        stub.latency = 0.02
    dead.outage(1.0)  # connections refused for a second, then it serves again
    code, records, summary = _generate(tmp_path, 90, "--base-url", a, "--base-url", b, "--base-url", c, "--concurrency", "6",
                                       "--max-retries", "0")
    assert code == 0 and all(r.status == "ok" for r in records), [r.error for r in records if r.error]  # nothing lost, no retry counted
    assert sorted(r.id for r in records) == [f"p{i:03d}" for i in range(90)]
    figures = summary["run"]["endpoints"]
    assert figures[b]["drained"] >= 1 and figures[b]["failed"] >= 1
    assert len(dead.requests) > 0 and figures[b]["ok"] == len(dead.requests)  # probed again after the outage, and used


def test_429_at_30_percent_loses_no_prompt(tmp_path: Path, stub_server: tuple[Any, str]) -> None:
    stub, url = stub_server
    rng, lock, sent = random.Random(7), threading.Lock(), []

    def script(number: int, body: dict[str, Any]) -> dict[str, Any] | None:
        with lock:
            if rng.random() < 0.3:
                sent.append(number)
                return {"status": 429, "headers": {"Retry-After": "0"} if len(sent) % 2 else {}}
        return None

    stub.script = script
    code, records, summary = _generate(tmp_path, 150, "--base-url", url, "--concurrency", "16", "--max-retries", "0")
    assert code == 0 and len(records) == 150 and all(r.status == "ok" for r in records), [r.error for r in records if r.error]
    assert len(sent) > 100  # about 30% of some 640 calls
    assert summary["retries"] == len(sent) and summary["run"]["endpoints"][url]["overloaded"] == len(sent)


def test_backpressure_past_the_call_deadline_fails_the_call_and_says_so(tmp_path: Path, stub_server: tuple[Any, str]) -> None:
    stub, url = stub_server
    stub.status = 503
    code, records, summary = _generate(tmp_path, 2, "--base-url", url, "--call-deadline", "1")
    assert code == 1 and all(r.status == "failed" for r in records)
    assert all("call deadline of 1 s" in r.error.message and "503" in r.error.message for r in records if r.error)
    assert summary["run"]["endpoints"][url]["overloaded"] >= 2


def test_endpoints_file_names_models_weights_and_limits(tmp_path: Path, stub_servers: list[tuple[Any, str]]) -> None:
    (one, a), (two, b), _ = stub_servers
    spec = tmp_path / "endpoints.yaml"
    spec.write_text(f"endpoints:\n  - url: {a}\n    model: replica-a\n    weight: 2\n    max_in_flight: 4\n  - url: {b}\n", encoding="utf-8")
    assert load_endpoints(spec) == (Endpoint(url=a, model="replica-a", weight=2, max_in_flight=4), Endpoint(url=b))
    code, records, _ = _generate(tmp_path, 6, "--endpoints", str(spec))
    assert code == 0 and all(r.status == "ok" for r in records)
    assert {body["model"] for body in one.requests} == {"replica-a"} and {body["model"] for body in two.requests} == {"served-model"}
    assert all(r.models["intent"] == "openai:served-model" for r in records)  # records name the model, not a replica


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("endpoints:\n  - url: http://a\n    wieght: 2\n", r"endpoints.yaml:3.*wieght.*did you mean 'weight'"),
        ("endpoints:\n  - url: http://a\n  - url: http://a\n", r"endpoints.yaml: endpoint 'http://a' is listed twice"),
        ("endpoints:\n  - url: http://a\n    weight: 0\n", r"endpoints.yaml:3.*weight"),
        ("endpoints: []\n", r"endpoints.yaml:1.*endpoints"),
    ],
)
def test_bad_endpoints_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    spec = tmp_path / "endpoints.yaml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_endpoints(spec)


def test_base_url_and_endpoints_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "endpoints.yaml"
    spec.write_text("endpoints:\n  - url: http://a\n", encoding="utf-8")
    src = _prompts(tmp_path / "in.jsonl", 1)
    assert main(["generate", str(src), "-o", str(tmp_path / "o.jsonl"), "--model", "m", "--endpoints", str(spec), "--base-url", "http://b"]) == 2
    assert "either --base-url or --endpoints" in capsys.readouterr().err


def test_an_endpoint_spreads_its_calls_over_small_http_pools() -> None:
    """One httpcore pool scans all its connections per request placed, so one endpoint's calls use
    pools of POOL_CONNECTIONS connections, packed: a light load opens one pool, a heavy one more."""
    from aidsafe.models.openai import POOL_CONNECTIONS, _Pools

    async def scenario() -> None:
        pools = _Pools(maximum=3 * POOL_CONNECTIONS - 1)
        assert len(pools.clients) == 3 and pools.clients == [None] * 3  # built on first use
        taken = [pools.take() for _ in range(POOL_CONNECTIONS)]
        assert {i for i, _ in taken} == {0} and pools.clients[1] is None
        assert pools.take()[0] == 1  # pool 0 is full: the next pool
        pools.give(0)
        assert pools.take()[0] == 0  # a free connection in the first pool is used first
        for _ in range(3 * POOL_CONNECTIONS):
            pools.take()
        assert max(pools.busy) - min(pools.busy) <= 1  # all full: the least busy
        await pools.aclose()
        assert pools.closed

    asyncio.run(scenario())
