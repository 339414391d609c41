"""Small statistics shared by the reports of several layers (judge scores, preference pairs,
evaluations): a share that is ``None`` rather than NaN, and the percentile bootstrap interval.

It imports nothing of aidsafe, so that any layer can use it; :mod:`aidsafe.judge.stats`
re-exports :func:`bootstrap_ci` (its public home). numpy is imported where it is used: the CLI
starts without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["bootstrap_ci", "share"]

_CHUNK_CELLS = 4_000_000
"""Upper bound on resamples x distinct values drawn at once (keeps the bootstrap's memory flat)."""


def share(part: int, whole: int) -> float | None:
    """``part / whole``, or None when ``whole`` is 0 (never NaN, so results serialise to strict JSON)."""
    return part / whole if whole else None


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean of ``values``.

    ``resamples`` samples of ``len(values)`` values are drawn with replacement; the interval
    is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of their means. The draw is
    done as multinomial counts over the distinct values (the same distribution as resampling
    the values themselves, in memory proportional to the number of distinct values), from
    ``numpy.random.default_rng(seed)``, so the same input and seed give the same interval.

    Returns ``None`` for fewer than 2 values, and ``(v, v)`` when every value is ``v``.
    """
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    means = _bootstrap_means(data, resamples, np.random.default_rng(seed))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _bootstrap_means(data: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` bootstrap samples of ``data``, drawn in bounded chunks."""
    import numpy as np

    distinct, counts = np.unique(data, return_counts=True)
    probabilities = counts / data.size
    chunk = max(1, _CHUNK_CELLS // distinct.size)
    parts = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = rng.multinomial(data.size, probabilities, size=size)
        parts.append(draws @ distinct / data.size)
    return np.concatenate(parts)
