"""The retry schedule for model calls: ``Retry-After`` when the server sends it, else exponential
with jitter. (The adaptive limit of calls in flight per endpoint is in :mod:`aidsafe.models.endpoints`.)"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, retry_after: float | None, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    A ``Retry-After`` is honoured (up to 120 s) but never below the first step of the schedule,
    ``base`` with jitter (``base / 2`` to ``base``): a server answering ``Retry-After: 0`` under load
    would otherwise be asked again at once by every waiting call together.
    """
    if retry_after is not None and retry_after >= 0:
        return max(min(retry_after, 120.0), base * (0.5 + random.random() / 2))
    return min(cap, base * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
