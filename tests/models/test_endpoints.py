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
        stub.latency = 0.06  # the run (about 5 s) outlasts the 2 s a drained endpoint is left alone: it is probed again
    dead.outage(2.0)  # connections refused for two seconds (past the run's start-up, whatever it costs), then it serves again
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


# -- the adaptive limit: latency, timeouts, regrowth (a fake clock, synthetic replies) -------------


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_queue_seen_in_the_latency_cuts_the_limit_before_calls_time_out_and_once_per_window() -> None:
    """32 calls sent at once to a server that serves 4 at a time, 0.5 s each (vLLM queues the rest):
    the replies come 4 by 4, each having waited behind those before it."""
    from aidsafe.models.endpoints import QUEUE_HIGH

    clock = _Clock()

    async def scenario() -> None:
        router = Router([Endpoint(url="http://a")], 256, clock=clock)
        (state,) = router.states
        sent = [await router.acquire() for _ in range(32)]
        cut_at, cut_to = None, 0.0
        for wave in range(1, 9):
            clock.t = 0.5 * wave
            for _ in range(4):
                await router.release(sent.pop(), "ok", latency=clock.t, tokens=20)
            if cut_at is None and state.limit < 256:
                cut_at, cut_to = clock.t, state.limit
        assert cut_at is not None and cut_at <= 0.5 * QUEUE_HIGH + 0.5  # well before a 3 s timeout
        assert 4 <= cut_to <= 12  # the 4 the server serves at once, and a queue about as long
        # the replies still queued were sent before the cut: they do not cut it again (nor grow it)
        assert state.limit == cut_to and state.in_flight == 0

        async def window(latency: float) -> None:
            slots = [await router.acquire() for _ in range(int(state.limit))]
            clock.t += latency
            for slot in slots:
                await router.release(slot, "ok", latency=latency, tokens=20)

        clock.t += 1.0
        await window(1.0)  # twice the no-load latency: a queue as long as what is served, held
        assert state.limit == cut_to
        await window(0.5)
        await window(0.5)  # no queue: it grows
        assert state.limit > cut_to
        grown = state.limit
        await window(2.5)
        await window(2.5)  # a queue again, seen by calls sent after the cut: cut again
        assert state.limit < grown

    asyncio.run(scenario())


def test_latency_is_compared_per_completion_token_so_long_replies_are_not_a_queue() -> None:
    """Roles differ in reply length: a 400-token draft takes 20 times a 20-token intent list."""
    clock = _Clock()

    async def scenario(with_tokens: bool) -> float:
        router = Router([Endpoint(url="http://a")], 64, clock=clock)
        (state,) = router.states
        for i in range(200):
            slot = await router.acquire()
            tokens, latency = (20, 0.5) if i % 2 else (400, 10.0)
            clock.t += latency
            await router.release(slot, "ok", latency=latency, tokens=tokens if with_tokens else 0)
        return state.limit

    assert asyncio.run(scenario(True)) == 64
    assert asyncio.run(scenario(False)) < 64  # compared as they are, the long ones look queued


@pytest.mark.parametrize("latency", [0.05, 1.0])
def test_a_limit_cut_to_1_grows_back_within_seconds(latency: float) -> None:
    """After a cut, the limit grows by one per round trip for ``recover`` seconds (3), then doubles
    per round trip (slow start): 1 to 256 in about 3 s plus 8 round trips, not 256 round trips."""
    clock = _Clock()

    async def scenario() -> float:
        router = Router([Endpoint(url="http://a")], 256, cooldown=0.0, clock=clock)
        (state,) = router.states
        for _ in range(9):
            await router.release(await router.acquire(), "overloaded")
        assert state.limit == 1
        started = clock.t
        while state.limit < 256 and clock.t - started < 600:
            slots = [await router.acquire() for _ in range(int(state.limit))]
            clock.t += latency
            for slot in slots:
                await router.release(slot, "ok", latency=latency, tokens=20)
        return clock.t - started

    assert asyncio.run(scenario()) <= 3.0 + 10 * latency


def test_a_drained_endpoint_slow_starts_back_to_its_limit() -> None:
    clock = _Clock()

    async def scenario() -> None:
        router = Router([Endpoint(url="http://a"), Endpoint(url="http://b")], 64, drain_base=0.2, clock=clock)
        a, _ = router.states
        slot = await router.acquire()
        assert slot is a
        await router.release(slot, "down")
        clock.t += 0.3
        assert a.limit == 1
        rounds = 0
        while a.limit < 64:
            slots = [await router.acquire() for _ in range(int(a.limit) + int(router.states[1].limit))]
            clock.t += 0.05
            for s in slots:
                await router.release(s, "ok", latency=0.05, tokens=20)
            rounds += 1
        assert rounds <= 8  # doubling: 1, 2, 4, ... 64

    asyncio.run(scenario())


def test_a_timeout_in_a_queue_halves_the_limit_and_is_told_apart_from_a_hang() -> None:
    clock = _Clock()

    async def scenario() -> None:
        router = Router([Endpoint(url="http://a")], 256, clock=clock)
        (state,) = router.states
        slots = [await router.acquire() for _ in range(16)]
        for _ in range(2):  # replies at the no-load pace
            clock.t += 0.5
            await router.release(slots.pop(), "ok", latency=0.5, tokens=20)
        # a request that hangs while the others are answered at their usual pace: a failure, not a queue
        sent = clock.t
        clock.t += 3.0
        await router.release(slots.pop(), "ok", latency=0.5, tokens=20)
        assert not router.queueing(state, sent)
        await router.release(slots.pop(), "timeout", latency=3.0)
        assert state.limit == 256 and state.failed == 1 and state._failures_in_row == 1
        # replies now wait (twice the no-load latency and more): a timeout meanwhile is the queue's
        for latency in (1.0, 1.5, 2.0):
            clock.t += 0.1
            await router.release(slots.pop(), "ok", latency=latency, tokens=20)
        assert state.limit == 256
        sent = clock.t - 3.0
        assert router.queueing(state, sent)
        in_flight = state.in_flight
        await router.release(slots.pop(), "timeout", latency=3.0)
        # halved from what was in use, not from 256 (or lower: the server's pace, 0.75 replies/s, by Little's law)
        assert 1 <= state.limit <= in_flight / 2 and state._failures_in_row == 0 and state.failed == 2
        # nothing answered for long: a dead server, whatever the latency said before
        clock.t += 60.0
        assert not router.queueing(state, clock.t - 3.0)

    asyncio.run(scenario())


def test_retry_after_0_waits_the_least_backoff_not_zero() -> None:
    from aidsafe.models.limiter import backoff_delay

    for attempt in (1, 5):
        waits = [backoff_delay(attempt, 0.0) for _ in range(500)]
        assert min(waits) >= 0.25 and max(waits) <= 0.5  # the first step of the schedule, with jitter
    assert min(backoff_delay(1, 0.01) for _ in range(100)) >= 0.25
    assert backoff_delay(1, 2.0) == 2.0 and backoff_delay(1, 1e6) == 120.0  # a real Retry-After is honoured
    assert 0.25 <= backoff_delay(1, None) <= 0.5 and 2.0 <= backoff_delay(4, None) <= 4.0


# -- a server that queues, over real HTTP --------------------------------------------------------


def _queueing(stub: Any, slots: int, seconds: float) -> None:
    """Make ``stub`` serve ``slots`` requests at a time, ``seconds`` each, the others waiting (as vLLM
    queues beyond ``--max-num-seqs``). A request whose client timed out is still served."""
    gate = threading.BoundedSemaphore(slots)

    def script(number: int, body: dict[str, Any]) -> None:
        with gate:
            threading.Event().wait(seconds)

    stub.script = script


def test_a_queueing_server_loses_no_prompt_and_its_timeouts_spend_no_retry(tmp_path: Path, stub_server: tuple[Any, str]) -> None:
    """32 prompts in flight against 4 slots of 0.1 s: sent at once, the last wait 0.8 s, past the
    0.5 s timeout. The limit comes down to what the server serves; the calls that timed out in its
    queue meanwhile are sent again without counting against ``--max-retries 0``."""
    stub, url = stub_server
    _queueing(stub, 4, 0.1)
    code, records, summary = _generate(tmp_path, 40, "--base-url", url, "--graph", "single", "--concurrency", "32",
                                       "--timeout", "0.5", "--max-retries", "0")
    assert code == 0 and len(records) == 40 and all(r.status == "ok" for r in records), [r.error for r in records if r.error]
    figures = summary["run"]["endpoints"][url]
    assert figures["ok"] == 40 and figures["limit"] < 32, figures  # the limit came down (it stayed at 256)
    assert summary["retries"] == figures["failed"]  # the calls that timed out in the queue were sent again, uncounted


def test_an_endpoint_that_never_answers_still_fails_after_max_retries(tmp_path: Path, stub_server: tuple[Any, str]) -> None:
    stub, url = stub_server
    stub.script = lambda number, body: {"hang": 1.0}
    code, records, _ = _generate(tmp_path, 2, "--base-url", url, "--timeout", "0.3", "--max-retries", "1")
    assert code == 1 and all(r.status == "failed" for r in records)
    assert all(r.error and "after 2 attempt(s)" in r.error.message for r in records), [r.error for r in records]
    assert len(stub.requests) == 2 * 2  # each prompt's first call, tried twice
