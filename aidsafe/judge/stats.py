"""Statistics over judged records: score tables with bootstrap intervals and pairwise win rates.

Conventions used throughout:

* An unscored metric (``None`` in :attr:`Judgement.scores`, or absent) is **excluded** from
  means and intervals and counted as ``n_unscored``; it is never read as a score of 0.
* A figure that cannot be computed (no scored value, no ok record, ...) is ``None``, never NaN,
  so every result serialises to strict JSON.
* Everything is deterministic: the bootstrap draws from ``numpy.random.default_rng(seed)``.

The markdown report is in :mod:`aidsafe.judge.report`, the PNG in :mod:`aidsafe.judge.plots`,
and the generation figures (rounds, consensus, thoughts, tokens) in :mod:`aidsafe.summary`.
:func:`bootstrap_ci` lives in :mod:`aidsafe._stats` (below the judge, for the pairs report too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal, cast, get_args

from .._stats import bootstrap_ci, share  # bootstrap_ci: re-exported (see __all__)
from .calibration import cohen_kappa
from .schema import METRICS, JudgedRecord, PairVerdict

__all__ = [
    "SCORE_RANGE",
    "bootstrap_ci",
    "grader",
    "grader_agreement",
    "metric_names",
    "metric_table",
    "paired_differences",
    "reconcile",
    "win_rates",
]

SCORE_RANGE: tuple[int, ...] = (1, 2, 3, 4, 5)


# --- score tables -------------------------------------------------------------------


def metric_names(records: Iterable[JudgedRecord]) -> list[str]:
    """The paper's metrics in :data:`METRICS` order, then any other scored metric, sorted."""
    extra = {name for record in records for name in record.judgement.scores} - set(METRICS)
    return [*METRICS, *sorted(extra)]


def metric_table(records: Iterable[JudgedRecord]) -> dict[str, dict[str, Any]]:
    """Per metric: ``mean``, ``ci_low``/``ci_high`` (95 % percentile bootstrap, seed 0),
    ``n_scored`` and ``n_unscored``.

    Every record given counts (filter by status first if failed records should not); a
    ``None`` or missing score is excluded from the mean and counted in ``n_unscored``. With no
    scored value the mean is ``None``; with fewer than two the interval is ``None``.
    """
    items = list(records)
    table: dict[str, dict[str, Any]] = {}
    for metric in metric_names(items):
        scores = [record.judgement.scores.get(metric) for record in items]
        scored = [float(score) for score in scores if score is not None]
        ci = bootstrap_ci(scored)
        table[metric] = {
            "mean": sum(scored) / len(scored) if scored else None,
            "ci_low": ci[0] if ci else None,
            "ci_high": ci[1] if ci else None,
            "n_scored": len(scored),
            "n_unscored": len(scores) - len(scored),
        }
    return table


# --- pairwise -----------------------------------------------------------------------

Verdict = Literal["a", "b", "tie"]
_VERDICTS: tuple[Verdict, ...] = get_args(Verdict)


def reconcile(first: str | None, second: str | None) -> Verdict | None:
    """Combine the verdicts of the two presentation orders (already mapped back to a/b/tie).

    Both agree: that verdict; they disagree: ``"tie"`` (position bias cancels out); one is
    ``None`` (unparsed): the other; both ``None``: ``None`` (unscored).
    """
    for verdict in (first, second):
        if verdict is not None and verdict not in _VERDICTS:
            raise ValueError(f"verdict must be one of a, b, tie or None, got {verdict!r}")
    if first is None:
        chosen = second
    elif second is None or first == second:
        chosen = first
    else:
        chosen = "tie"
    return cast("Verdict | None", chosen)  # checked against _VERDICTS above


def win_rates(verdicts: Iterable[PairVerdict]) -> dict[str, Any]:
    """Counts of ``a_wins``, ``b_wins``, ``ties`` and ``unscored`` (winner ``None``), ``n`` (all
    verdicts), and ``a_win_rate``, ``b_win_rate``, ``tie_rate`` over the **scored** verdicts
    (``None`` when none is scored)."""
    counts = Counter(verdict.winner for verdict in verdicts)
    scored = counts["a"] + counts["b"] + counts["tie"]
    return {
        "a_wins": counts["a"],
        "b_wins": counts["b"],
        "ties": counts["tie"],
        "unscored": counts[None],
        "n": scored + counts[None],
        "a_win_rate": share(counts["a"], scored),
        "b_win_rate": share(counts["b"], scored),
        "tie_rate": share(counts["tie"], scored),
    }


# --- paired comparisons -------------------------------------------------------------


def paired_differences(
    baseline: Iterable[JudgedRecord], other: Iterable[JudgedRecord], *, resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per metric, ``other - baseline`` over the ids both scored: the mean difference, its 95%
    percentile-bootstrap interval (the pairs resampled together, so the interval reflects the
    pairing), the relative gain ``mean(other) / mean(baseline) - 1`` over the same pairs (Table 1's
    "+10.91%"), and ``n`` pairs. A figure that cannot be computed is None."""
    base = {record.id: record for record in baseline}
    ours = {record.id: record for record in other}
    common = [record_id for record_id in base if record_id in ours]
    out: dict[str, dict[str, Any]] = {}
    for metric in metric_names([*base.values(), *ours.values()]):
        pairs = [
            (float(a), float(b))
            for a, b in ((base[i].judgement.scores.get(metric), ours[i].judgement.scores.get(metric)) for i in common)
            if a is not None and b is not None
        ]
        diffs = [b - a for a, b in pairs]
        ci = bootstrap_ci(diffs, resamples=resamples, seed=seed)
        base_mean = sum(a for a, _ in pairs) / len(pairs) if pairs else None
        out[metric] = {
            "mean_difference": sum(diffs) / len(diffs) if diffs else None,
            "ci_low": ci[0] if ci else None,
            "ci_high": ci[1] if ci else None,
            "relative_gain": (sum(b for _, b in pairs) / len(pairs)) / base_mean - 1 if base_mean else None,
            "n": len(pairs),
        }
    return out


def grader(verdict: PairVerdict) -> str:
    """Who gave a pairwise verdict: judge model and rubric (``unknown`` for verdicts that predate them)."""
    if verdict.judge_model is None and verdict.rubric is None:
        return "unknown"
    return f"{verdict.judge_model or '?'} / {verdict.rubric or '?'}"


def grader_agreement(first: Iterable[PairVerdict], second: Iterable[PairVerdict]) -> dict[str, Any]:
    """How two graders' verdicts on the same pairs agree: over the ids both scored, ``n``, the share
    of equal verdicts (``agreement``) and Cohen's kappa over ``a`` / ``b`` / ``tie``."""
    theirs = {verdict.id: verdict.winner for verdict in second if verdict.winner is not None}
    pairs = [(verdict.winner, theirs[verdict.id]) for verdict in first if verdict.winner is not None and verdict.id in theirs]
    return {
        "n": len(pairs),
        "agreement": share(sum(a == b for a, b in pairs), len(pairs)),
        "kappa": cohen_kappa([a for a, _ in pairs], [b for _, b in pairs], categories=_VERDICTS) if pairs else None,
    }
