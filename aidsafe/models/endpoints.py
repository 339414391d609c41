"""Several OpenAI-compatible endpoints serving one model: routing, an adaptive limit per endpoint, health.

A call goes to the endpoint with the fewest calls in flight relative to its capacity (its current
limit times its weight) among those that are up and below their limit; when every endpoint is at its
limit the call waits for a free slot anywhere. Each endpoint has its own AIMD limit (see
:mod:`aidsafe.models.limiter`: halved on a 429 or 503 at most once per ``cooldown`` seconds, raised
by one after ``limit`` successes). With more than one endpoint, an endpoint whose connection fails
(or that fails three calls in a row with a timeout or a 5xx) is **drained**: taken out of the
rotation for a while (2 s, doubling up to 60 s), its calls retried elsewhere without counting
against ``max_retries``; then it is probed with one call at a time and grows back on success.

``endpoints.yaml`` (``--endpoints FILE``)::

    endpoints:
      - url: http://h1:8000/v1
        model: mixtral-8x22b     # optional: the name this server serves (default: the role's model)
        weight: 2                # optional: relative capacity (default 1)
        max_in_flight: 128       # optional (default: the run's, 256)
      - url: http://h2:8000/v1
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

__all__ = ["Endpoint", "EndpointState", "Outcome", "Router", "load_endpoints", "router_for"]

Outcome = Literal["ok", "overloaded", "failed", "down", "neutral"]
"""How a call ended for its endpoint: answered; 429/503 (backpressure); timeout or 5xx; connection
refused or dropped (the endpoint looks dead); or nothing the endpoint is to blame for (a 400)."""


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
    """The router's view of one endpoint: its AIMD limit, calls in flight, health and counts."""

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

    def __post_init__(self) -> None:
        self.limit = float(self.maximum)

    def load(self) -> float:
        return self.in_flight / (max(self.limit, 1.0) * self.endpoint.weight)

    def stats(self, now: float) -> dict[str, Any]:
        return {"calls": self.calls, "ok": self.ok, "overloaded": self.overloaded, "failed": self.failed, "drained": self.drained,
                "in_flight": self.in_flight, "limit": int(self.limit), "up": self.down_until <= now}


class Router:
    """Calls in flight across a set of endpoints (one router per set in a process, see :func:`router_for`)."""

    def __init__(self, endpoints: Sequence[Endpoint], default_max: int, *, cooldown: float = 1.0, drain_base: float = 2.0,
                 drain_cap: float = 60.0) -> None:
        if not endpoints:
            raise ConfigError("no endpoint to call")
        self.states = [EndpointState(e, e.max_in_flight or default_max) for e in endpoints]
        self.cooldown, self.drain_base, self.drain_cap = cooldown, drain_base, drain_cap
        self._cond: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._cond is None or self._loop is not loop:  # a new event loop (e.g. a second asyncio.run)
            self._cond, self._loop = asyncio.Condition(), loop
            for state in self.states:
                state.in_flight = 0
        return self._cond

    def _pick(self, now: float) -> EndpointState | None:
        ready = [s for s in self.states if s.down_until <= now and s.in_flight < int(s.limit)]
        if not ready:
            return None
        return min(ready, key=lambda s: (s.load(), -s.endpoint.weight))

    async def acquire(self) -> EndpointState:
        """A slot on the least loaded endpoint that is up (waits while every endpoint is full or drained)."""
        cond = self._condition()
        async with cond:
            while True:
                now = time.monotonic()
                state = self._pick(now)
                if state is not None:
                    state.in_flight += 1
                    state.calls += 1
                    return state
                drained = [s.down_until for s in self.states if s.down_until > now]
                timeout = (min(drained) - now) if drained else None
                try:
                    await asyncio.wait_for(cond.wait(), timeout)
                except asyncio.TimeoutError:
                    pass

    def _drain(self, state: EndpointState, now: float) -> None:
        state.drained += 1
        state.down_until = now + min(self.drain_cap, self.drain_base * 2 ** (state.drained - 1))
        state.limit = 1.0  # back in rotation, it is probed one call at a time
        state._failures_in_row = 0

    async def release(self, state: EndpointState, outcome: Outcome) -> bool:
        """Free the slot and learn from the outcome. True when the call may go elsewhere without
        counting as a retry: its endpoint was drained and another one is up."""
        cond = self._condition()
        async with cond:
            now = time.monotonic()
            state.in_flight = max(0, state.in_flight - 1)
            rerouted = False
            if outcome == "ok":
                state.ok += 1
                state._failures_in_row = 0
                if state.limit < state.maximum:
                    state._successes += 1
                    if state._successes >= int(state.limit):
                        state.limit = min(float(state.maximum), state.limit + 1)
                        state._successes = 0
            elif outcome == "overloaded":
                state.overloaded += 1
                if now - state._last_decrease >= self.cooldown:
                    state.limit = max(1.0, state.limit / 2)
                    state._last_decrease = now
                state._successes = 0
            elif outcome in ("failed", "down"):
                state.failed += 1
                state._failures_in_row += 1
                state._successes = 0
                if len(self.states) > 1 and (outcome == "down" or state._failures_in_row >= 3):
                    if state.down_until <= now:
                        self._drain(state, now)
                    rerouted = any(s.down_until <= now for s in self.states if s is not state)
            cond.notify_all()
            return rerouted

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint URL: calls, ok, overloaded (429/503), failed, drained, in flight, limit, up."""
        now = time.monotonic()
        return {s.endpoint.url: s.stats(now) for s in self.states}


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
