"""Several OpenAI-compatible endpoints serving one model: routing, an adaptive limit per endpoint, health.

A call goes to the endpoint with the fewest calls in flight relative to its capacity (its current
limit times its weight) among those that are up and below their limit; when every endpoint is at its
limit the call waits for a free slot anywhere. With more than one endpoint, an endpoint whose
connection fails (or that fails three calls in a row with a timeout nobody else's reply explains, or
a 5xx) is **drained**: taken out of the rotation for a while (2 s, doubling up to 60 s), its calls
retried elsewhere without counting against ``max_retries``; then it is probed with one call at a
time and grows back on success.

**The limit of each endpoint** reads three signals of overload:

- a 429 or 503 halves it, at most once per ``cooldown`` seconds (AIMD, as before);
- **latency**: a server such as vLLM does not refuse the calls beyond the sequences it decodes at
  once (``--max-num-seqs``), it queues them, and the only sign is that replies take longer. Each
  endpoint keeps a no-load latency (per completion token, in 16 classes of reply length, see
  :meth:`EndpointState.observe`) and a smoothed ratio of recent latencies to it. Above
  :data:`QUEUE_HIGH` the calls wait in the server's queue longer than they are served, and the
  limit is cut to the calls in flight times :data:`QUEUE_TARGET` / ratio (a Vegas-style gradient:
  the server's share of them, plus a queue as long again; at most to a quarter), or lower, to what
  the server's rate of replies says it serves at once (Little's law, see :meth:`EndpointState.cut`);
- **a timeout in a queue**: the endpoint answers other calls (one reply came after the timed-out
  call was sent, or just before) and their latencies show a queue (a smoothed ratio of at least
  :data:`QUEUE_LOW`, or a cut since, or replies taking half the timeout). The call waited in the
  queue of a live server: the limit is halved, and the caller retries the call at once (the limit
  paces it) without counting it against ``max_retries`` (see :meth:`Router.queueing`; the call
  deadline bounds it). Any other timeout (a dead server, or one request that hangs while the
  others are answered at their usual pace) counts as a failure.

Latency is measured by the client, from taking the slot to the reply parsed, so it includes the
client's own delays: a client whose CPU is saturated (hundreds of replies at once on one core)
handles each reply late, and that looks like a queue too. Below :data:`MIN_LATENCY` a server's
latency counts as that much, so milliseconds of client delay never cut the limit of a fast server;
beyond it, a saturated client may cut its limits, which costs nothing while it is the bottleneck,
and they grow back once it keeps up.

One cut per window: a cut ignores the calls sent before the previous cut (their latency reflects
the load before it), so a queue that drains slowly does not cut the limit again and again down to 1.

The limit grows while the latency ratio is below :data:`QUEUE_LOW`: by one per success (it doubles
per round trip, slow start) up to the last good limit (the limit set by the last cut, or the one
an endpoint had before it was drained), then by one per round trip (``limit`` successes). Once
``recover`` seconds pass without a cut, it slow-starts up to the maximum: a limit cut to 1 with fast
replies is back at 256 within seconds, not after 256 round trips.

``endpoints.yaml`` (``--endpoints FILE``)::

    endpoints:
      - url: http://h1:8000/v1
        model: mixtral-8x22b     # optional: the name this server serves (default: the role's model)
        weight: 2                # optional: relative capacity (default 1)
        max_in_flight: 128       # optional (default: the run's, 256)
        system_role: merge       # optional: its chat template refuses a system message
      - url: http://h2:8000/v1
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

__all__ = ["QUEUE_HIGH", "QUEUE_LOW", "QUEUE_TARGET", "Endpoint", "EndpointState", "Outcome", "Router", "load_endpoints", "router_for"]

Outcome = Literal["ok", "overloaded", "timeout", "failed", "down", "neutral"]
"""How a call ended for its endpoint: answered; 429/503 (backpressure); timed out; a 5xx (or another
failure); connection refused or dropped (the endpoint looks dead); or nothing the endpoint is to
blame for (a 400)."""

QUEUE_HIGH = 2.5
"""Latency ratio (recent over no-load) above which the endpoint is queueing: the limit is cut.
It sits above the slowdown a batching server shows without any queue (vLLM decodes a full batch
more slowly per token than a single sequence), so that a full batch alone does not cut it."""
QUEUE_TARGET = 2.0
"""The ratio a latency cut aims at: calls in flight times ``QUEUE_TARGET / ratio``, i.e. what the
server serves at once plus a queue as long again, which keeps its batch full."""
QUEUE_LOW = 1.5
"""The limit grows only while the ratio is below this (between it and ``QUEUE_HIGH`` it holds)."""
RATIO_WEIGHT = 0.25
"""Weight of each reply in the smoothed latency ratio (one slow reply alone does not cut)."""
BASE_DOWN = 0.25
"""Share of the way the no-load latency moves towards a faster reply (one outlier does not set it)..."""
BASE_FIRST = 8
"""... once a class has seen this many replies; before, the fastest is taken (the first replies are
often slow: connections being opened, a server warming up)."""
BASE_DRIFT = 60.0
"""Seconds over which the no-load latency may rise by its own size, learnt only from replies at light
load (under half the limit in flight): a server that has become slower is learnt, a queue is not."""
MIN_LATENCY = 0.1
"""Seconds: no-load latencies below this count as this much (see :meth:`EndpointState.observe`)."""
RATE_WINDOWS = 8
"""Length of a window of replies counted for the rate, in no-load call times."""
_CLASSES = 16
"""Reply-length classes of the no-load latency: ``tokens.bit_length()``, 15 and more together."""


class Endpoint(BaseModel):
    """One server of the model (a vLLM replica, say)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    model: str | None = None
    """The model name this server serves, when it differs from the role's (e.g. replicas with their own names)."""
    weight: float = Field(default=1.0, gt=0)
    """Relative capacity: with weight 2 an endpoint gets about twice the calls of one with weight 1."""
    max_in_flight: int | None = Field(default=None, ge=1)
    """Most calls in flight to it (default: the run's ``max_in_flight``)."""
    system_role: Literal["native", "merge"] | None = None
    """``merge`` for a server whose chat template refuses a system message (its system text then joins
    the first user turn); default: the role's or the run's ``system_role`` (see :data:`~aidsafe.models.base.SystemRole`)."""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[Endpoint] = Field(min_length=1)


def load_endpoints(path: str | Path) -> tuple[Endpoint, ...]:
    """Read an endpoints file; errors name the file, the line and the field."""
    from .._yaml import load_yaml_model

    data = load_yaml_model(Path(path), _File, kind="endpoints")
    urls = [e.url for e in data.endpoints]
    repeated = sorted({u for u in urls if urls.count(u) > 1})
    if repeated:
        raise ConfigError(f"endpoint {repeated[0]!r} is listed twice", file=path)
    return tuple(data.endpoints)


def endpoints_from_urls(urls: Sequence[str]) -> tuple[Endpoint, ...]:
    """``--base-url`` given several times: one endpoint per URL, equal weights."""
    try:
        out = tuple(Endpoint(url=u) for u in urls)
    except ValidationError as exc:
        raise ConfigError(f"bad --base-url: {exc.errors()[0]['msg']}") from None
    repeated = sorted({u for u in urls if list(urls).count(u) > 1})
    if repeated:
        raise ConfigError(f"--base-url {repeated[0]!r} is given twice")
    return out


@dataclass
class EndpointState:
    """The router's view of one endpoint: its adaptive limit, calls in flight, health and counts."""

    endpoint: Endpoint
    maximum: int
    limit: float = 0.0
    in_flight: int = 0
    calls: int = 0
    ok: int = 0
    overloaded: int = 0
    failed: int = 0
    drained: int = 0
    """Times it was taken out of the rotation."""
    down_until: float = 0.0
    _failures_in_row: int = 0
    _successes: int = 0
    _last_decrease: float = field(default=-1e9)
    _good: float = 0.0
    """The last good limit: slow start runs up to it after a cut."""
    _last_ok: float = field(default=-1e9)
    _ratio: float = 1.0
    """Smoothed ratio of latency to the no-load latency, over the calls sent since the last cut."""
    _base: list[float] = field(default_factory=lambda: [0.0] * _CLASSES)
    """No-load seconds (per completion token where known), per reply-length class; 0: not seen yet."""
    _base_at: list[float] = field(default_factory=lambda: [0.0] * _CLASSES)
    _base_seen: list[int] = field(default_factory=lambda: [0] * _CLASSES)
    _latency: float = 0.0
    """Smoothed latency of its replies, in seconds."""
    _unloaded: float = 0.0
    """Smoothed no-load seconds of a whole call (its latency over its ratio): what a call costs the server."""
    _since: float = -1.0
    """Start of the current window of replies counted for the rate (< 0: none open)."""
    _ok_since: int = 0
    """Replies before the window began."""
    _rate: float = 0.0
    """Replies per second in the last window closed."""

    def __post_init__(self) -> None:
        self.limit = self._good = float(self.maximum)

    def load(self) -> float:
        return self.in_flight / (max(self.limit, 1.0) * self.endpoint.weight)

    def stats(self, now: float) -> dict[str, Any]:
        return {"calls": self.calls, "ok": self.ok, "overloaded": self.overloaded, "failed": self.failed, "drained": self.drained,
                "in_flight": self.in_flight, "limit": int(self.limit), "up": self.down_until <= now}

    def observe(self, now: float, latency: float, tokens: int) -> float:
        """Learn from the latency of a reply of ``tokens`` completion tokens; its ratio to the no-load latency.

        Replies differ in length (an intent list is short, a draft long), and a server's time per
        reply grows with its length, so the latency is taken per completion token when the server
        says how many (``usage``), and compared with replies of about the same length
        (``tokens.bit_length()``: 1, 2-3, 4-7, ... tokens), whose time per token is alike (a short
        reply's is mostly the prompt's prefill). Without a count, latencies are compared as they are.
        The no-load latency of a class is the fastest of its first :data:`BASE_FIRST` replies, then
        moves a quarter of the way towards each faster one, and rises (at most by itself in :data:`BASE_DRIFT` seconds) only on replies
        at light load, so a persistent queue is never learnt as the norm.

        The ratio is taken to at least :data:`MIN_LATENCY` seconds: the latency is measured in the
        client, and a client busy with many replies at once delays each by some milliseconds, which
        against a server answering in 20 ms would look like a queue.
        """
        n = tokens if tokens > 0 else 1
        value = latency / n
        if value <= 0.0:  # too fast for the clock: nothing to learn
            return 1.0
        k = min(n.bit_length(), _CLASSES - 1) if tokens > 0 else 0
        base = self._base[k]
        seen = self._base_seen[k]
        if seen < BASE_FIRST:
            self._base_seen[k] = seen + 1
        if base <= 0.0 or (value < base and seen < BASE_FIRST):
            base = value
        elif value < base:
            base += BASE_DOWN * (value - base)
        elif self.in_flight < self.limit / 2:
            base = min(value, base * (1.0 + (now - self._base_at[k]) / BASE_DRIFT))
        else:
            return latency / max(base * n, MIN_LATENCY)
        self._base[k], self._base_at[k] = base, now
        return latency / max(base * n, MIN_LATENCY)

    def cut(self, now: float, factor: float) -> None:
        """Cut the limit to ``factor`` times what is in use (the limit, or the calls in flight with
        the one just ended when fewer: halving a limit of 256 with 32 calls in flight does nothing),
        or lower, to :data:`QUEUE_TARGET` times the calls the server serves at once, by Little's law:
        its replies per second since the last cut times the no-load seconds of a call. The calls in
        flight overstate that right after a burst (the first replies of 32 calls sent together waited
        only behind a few of them), the rate of replies does not."""
        new = min(self.limit, self.in_flight + 1.0) * factor
        if self._since >= 0.0 and now - self._since >= self._unloaded:
            self.roll(now)
        if self._rate > 0.0 and self._unloaded > 0.0:
            new = min(new, QUEUE_TARGET * self._rate * self._unloaded)
        self.limit = self._good = max(1.0, new)
        self._since, self._ok_since = now, self.ok
        self._last_decrease = now
        self._ratio = QUEUE_LOW  # the calls sent from now on decide whether it cuts again or grows
        self._successes = 0

    def count(self, now: float, sent: float) -> None:
        """Count a reply towards the rate. A window opens at the sending of the first call after the
        endpoint was idle (idle time is not the server's pace), and closes after
        :data:`RATE_WINDOWS` no-load call times (at least a second) or at a cut."""
        if self._since < 0.0:
            self._since, self._ok_since = sent, self.ok - 1
        elif now - self._since >= max(1.0, RATE_WINDOWS * self._unloaded):
            self.roll(now)

    def roll(self, now: float) -> None:
        """Close the window of replies: its rate is the one a cut reads; the next opens now."""
        span = now - self._since
        if span > 0.0:
            self._rate = (self.ok - self._ok_since) / span
        self._since, self._ok_since = now, self.ok

    def grow(self, now: float, recover: float) -> None:
        """One success at a latency showing no queue: slow start (one per success) up to the last
        good limit, or up to the maximum once ``recover`` seconds passed without a cut; additive
        (one per ``limit`` successes) above it."""
        ceiling = float(self.maximum) if now - self._last_decrease >= recover else self._good
        if self.limit < ceiling:
            self.limit = min(ceiling, self.limit + 1.0)
            self._successes = 0
            return
        self._successes += 1
        if self._successes >= int(self.limit):
            self.limit = min(float(self.maximum), self.limit + 1.0)
            self._successes = 0


class Router:
    """Calls in flight across a set of endpoints (one router per set in a process, see :func:`router_for`).

    ``recover``: seconds without a cut after which a limit slow-starts back to the maximum.
    ``clock``: the monotonic clock latencies and cooldowns are measured on (a test's fake one).
    """

    def __init__(self, endpoints: Sequence[Endpoint], default_max: int, *, cooldown: float = 1.0, drain_base: float = 2.0,
                 drain_cap: float = 60.0, recover: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not endpoints:
            raise ConfigError("no endpoint to call")
        self.states = [EndpointState(e, e.max_in_flight or default_max) for e in endpoints]
        self.cooldown, self.drain_base, self.drain_cap, self.recover = cooldown, drain_base, drain_cap, recover
        self._clock = clock
        # The router is shared by every model on these endpoints in the process, whatever event loop or
        # thread calls: its state is guarded by a thread lock (held briefly, never across an await), a
        # caller waits on a future of its own loop, woken thread-safely, and each loop's calls in flight
        # are counted so that those of a loop closed before it released them can be given back.
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._held: dict[asyncio.AbstractEventLoop, list[int]] = {}
        """Calls in flight per event loop, per endpoint (index in ``states``)."""

    def _held_by(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        """The calls in flight of ``loop`` (with the lock held). A loop seen for the first time first
        gives back the slots of loops that were closed with calls in flight (a second ``asyncio.run``
        after one that was torn down)."""
        held = self._held.get(loop)
        if held is None:
            for closed in [other for other in self._held if other.is_closed()]:
                for state, count in zip(self.states, self._held.pop(closed), strict=True):
                    state.in_flight = max(0, state.in_flight - count)
            held = self._held[loop] = [0] * len(self.states)
        return held

    def _wake(self) -> None:
        """Wake every waiting caller (with the lock held): a slot may be free for any of them."""
        waiters, self._waiters = self._waiters, []
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, waiter in waiters:
            if waiter.done():
                continue
            if loop is here:
                waiter.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, waiter)

    def _pick(self, now: float) -> EndpointState | None:
        ready = [s for s in self.states if s.down_until <= now and s.in_flight < int(s.limit)]
        if not ready:
            return None
        return min(ready, key=lambda s: (s.load(), -s.endpoint.weight))

    async def acquire(self) -> EndpointState:
        """A slot on the least loaded endpoint that is up (waits while every endpoint is full or drained)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                held = self._held_by(loop)  # first: a new loop frees the slots a closed one kept
                now = self._clock()
                state = self._pick(now)
                if state is not None:
                    state.in_flight += 1
                    state.calls += 1
                    held[self.states.index(state)] += 1
                    return state
                drained = [s.down_until for s in self.states if s.down_until > now]
                timeout = (min(drained) - now) if drained else None
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, waiter))
            try:
                await asyncio.wait_for(waiter, timeout)
            except asyncio.TimeoutError:
                pass

    def _drain(self, state: EndpointState, now: float) -> None:
        state.drained += 1
        state.down_until = now + min(self.drain_cap, self.drain_base * 2 ** (state.drained - 1))
        state._good = max(state._good, state.limit)  # slow start back to the limit it had (or was growing back to)
        state.limit = 1.0  # back in rotation, it is probed one call at a time
        state._last_decrease = now
        state._failures_in_row = 0

    def queueing(self, state: EndpointState, sent: float) -> bool:
        """Whether a call sent to ``state``'s endpoint at ``sent`` (on the router's clock) that timed
        out waited in the queue of a live, overloaded server rather than on a dead or stuck one.

        Live: it answered a call after ``sent``, or within as long again before it. (The second half
        covers a server that goes on serving the calls whose clients timed out, as it does not notice
        they hung up: for a while every reply it gives is one nobody waits for, yet it is serving.)
        Overloaded: the latencies of its replies show a queue (a smoothed ratio to the no-load
        latency of at least :data:`QUEUE_LOW`, which a cut also sets), or they take half as long as
        the timed-out call waited (a queue from the very first calls, whose no-load latency was
        never seen). A request that hangs while the others are answered at their usual pace is not
        overload, and its timeout counts as a failure."""
        return _queueing(state, sent, self._clock())

    async def release(self, state: EndpointState, outcome: Outcome, latency: float | None = None, tokens: int = 0) -> bool:
        """Free the slot and learn from the outcome, the call's ``latency`` in seconds (from acquiring
        the slot to its end) and, for a reply, its completion ``tokens`` (0: not known). True when the
        call may go elsewhere without counting as a retry: its endpoint was drained and another one is up."""
        loop = asyncio.get_running_loop()
        with self._lock:
            now = self._clock()
            held = self._held_by(loop)
            index = self.states.index(state)
            held[index] = max(0, held[index] - 1)
            state.in_flight = max(0, state.in_flight - 1)
            sent = now if latency is None else now - latency
            fresh = sent >= state._last_decrease  # sent after the last cut: it saw the current limit
            rerouted = False
            if outcome == "ok":
                state.ok += 1
                state._failures_in_row = 0
                state._last_ok = now
                if latency is not None:
                    ratio = state.observe(now, latency, tokens)
                    unloaded = latency / ratio
                    state._unloaded += RATIO_WEIGHT * (unloaded - state._unloaded) if state._unloaded > 0.0 else unloaded
                    state._latency += RATIO_WEIGHT * (latency - state._latency)
                    state.count(now, sent)
                    if fresh:
                        state._ratio += RATIO_WEIGHT * (ratio - state._ratio)
                        if state._ratio > QUEUE_HIGH:  # queueing: keep the server's share and a queue as long
                            state.cut(now, max(0.25, QUEUE_TARGET / max(ratio, state._ratio)))
                            fresh = False
                if fresh and state._ratio < QUEUE_LOW and state.limit < state.maximum:
                    state.grow(now, self.recover)
            elif outcome == "overloaded":
                state.overloaded += 1
                if now - state._last_decrease >= self.cooldown:
                    state.limit = state._good = max(1.0, state.limit / 2)
                    state._last_decrease = now
                state._successes = 0
            elif outcome == "timeout" and _queueing(state, sent, now):
                # others were answered while it waited: a queue, not a dead server
                state.failed += 1
                state._successes = 0
                if fresh:
                    state.cut(now, 0.5)
            elif outcome in ("failed", "down", "timeout"):
                state.failed += 1
                state._failures_in_row += 1
                state._successes = 0
                if len(self.states) > 1 and (outcome == "down" or state._failures_in_row >= 3):
                    if state.down_until <= now:
                        self._drain(state, now)
                    rerouted = any(s.down_until <= now for s in self.states if s is not state)
            if state.in_flight == 0:
                state._since = -1.0  # idle: the next window opens with the next call
            self._wake()
            return rerouted

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint URL: calls, ok, overloaded (429/503), failed, drained, in flight, limit, up."""
        now = self._clock()
        return {s.endpoint.url: s.stats(now) for s in self.states}


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _queueing(state: EndpointState, sent: float, now: float) -> bool:
    waited = now - sent
    return state._last_ok >= sent - waited and (state._ratio >= QUEUE_LOW or state._latency >= waited / 2)


_ROUTERS: dict[tuple[tuple[Endpoint, ...], int], Router] = {}


def router_for(endpoints: Sequence[Endpoint], default_max: int) -> Router:
    """The shared router of a set of endpoints (every model on them shares its limits and health)."""
    key = (tuple(endpoints), default_max)
    router = _ROUTERS.get(key)
    if router is None:
        router = _ROUTERS[key] = Router(endpoints, default_max)
    return router


def all_stats() -> dict[str, dict[str, Any]]:
    """Per-endpoint figures of every router in this process (for the run summary)."""
    out: dict[str, dict[str, Any]] = {}
    for router in _ROUTERS.values():
        out.update(router.stats())
    return out
