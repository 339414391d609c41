"""Adaptive concurrency per endpoint (AIMD) and the retry schedule for model calls.

On a 429 or a 5xx the endpoint's limit of calls in flight is halved (at most once per
``cooldown`` seconds, so one burst of errors does not collapse it to 1); every ``limit``
successes raise it by one, up to its maximum. A rate-limited server therefore sees fewer calls,
never a retry storm. The waiting time before a retry honours ``Retry-After`` when the server
sends it, else grows exponentially with jitter.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

__all__ = ["AdaptiveLimiter", "backoff_delay", "limiter_for"]


@dataclass
class AdaptiveLimiter:
    """Calls in flight to one endpoint, with an AIMD limit."""

    maximum: int
    minimum: int = 1
    cooldown: float = 1.0
    limit: float = 0.0
    in_flight: int = 0
    decreases: int = 0
    _successes: int = 0
    _last_decrease: float = field(default=-1e9)
    _cond: asyncio.Condition | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        self.limit = float(self.maximum)

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._cond is None or self._loop is not loop:  # a new event loop (e.g. a second asyncio.run)
            self._cond, self._loop, self.in_flight = asyncio.Condition(), loop, 0
        return self._cond

    async def acquire(self) -> None:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self, *, overloaded: bool = False, success: bool = False) -> None:
        cond = self._condition()
        async with cond:
            self.in_flight = max(0, self.in_flight - 1)
            if overloaded:
                now = time.monotonic()
                if now - self._last_decrease >= self.cooldown:
                    self.limit = max(float(self.minimum), self.limit / 2)
                    self._last_decrease = now
                    self.decreases += 1
                self._successes = 0
            elif success and self.limit < self.maximum:
                self._successes += 1
                if self._successes >= int(self.limit):
                    self.limit = min(float(self.maximum), self.limit + 1)
                    self._successes = 0
            cond.notify_all()


_LIMITERS: dict[str, AdaptiveLimiter] = {}


def limiter_for(endpoint: str, maximum: int) -> AdaptiveLimiter:
    """The shared limiter of an endpoint (one per base URL in this process)."""
    limiter = _LIMITERS.get(endpoint)
    if limiter is None or limiter.maximum != maximum:
        limiter = _LIMITERS[endpoint] = AdaptiveLimiter(maximum=maximum)
    return limiter


def backoff_delay(attempt: int, retry_after: float | None, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, 120.0)
    return min(cap, base * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
