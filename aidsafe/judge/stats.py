"""Statistics over judged records: score tables with bootstrap intervals, deliberation figures,
pairwise win rates, and the paper's Table 1 as markdown (plus an optional PNG of the score
distributions).

Conventions used throughout:

* An unscored metric (``None`` in :attr:`Judgement.scores`, or absent) is **excluded** from
  means and intervals and counted as ``n_unscored``; it is never read as a score of 0.
* A figure that cannot be computed (no scored value, no ok record, ...) is ``None``, never NaN,
  so every result serialises to strict JSON.
* Everything is deterministic: the bootstrap draws from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AidsafeError
from ..records import Record
from .schema import METRICS, JudgedRecord, PairVerdict

__all__ = [
    "PLOTS_HINT",
    "PlotsUnavailableError",
    "bootstrap_ci",
    "deliberation_stats",
    "markdown_report",
    "metric_names",
    "metric_table",
    "plot_distributions",
    "reconcile",
    "require_plots",
    "score_counts",
    "total_tokens",
    "win_rates",
]

PLOTS_HINT = "pip install 'aidsafe[plots]'"
SCORE_RANGE: tuple[int, ...] = (1, 2, 3, 4, 5)
_CHUNK_CELLS = 4_000_000
"""Upper bound on resamples x distinct values drawn at once (keeps the bootstrap's memory flat)."""


class PlotsUnavailableError(AidsafeError):
    """matplotlib is not installed (it comes with the ``plots`` extra)."""


# --- bootstrap ----------------------------------------------------------------------


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
    distinct, counts = np.unique(data, return_counts=True)
    probabilities = counts / data.size
    chunk = max(1, _CHUNK_CELLS // distinct.size)
    parts = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = rng.multinomial(data.size, probabilities, size=size)
        parts.append(draws @ distinct / data.size)
    return np.concatenate(parts)


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


# --- deliberation -------------------------------------------------------------------


def total_tokens(record: Record) -> int:
    """Prompt plus completion tokens over every stage of the record's ``usage``."""
    return sum(usage.prompt_tokens + usage.completion_tokens for usage in record.usage.values())


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def deliberation_stats(records: Iterable[Record]) -> dict[str, Any]:
    """Figures of the generation run.

    ``n``, ``ok``, ``failed`` and ``stop_reasons`` (count per reason) are over all records;
    every mean and share is over the **ok** records only:

    * ``mean_rounds``: deliberation rounds;
    * ``consensus_rate``: share with ``stop_reason == "consensus"`` among the ok records that
      had a loop (``stop_reason != "no_loop"``); ``None`` when none had one;
    * ``mean_thoughts_before_refiner``: ``len(thoughts) + len(removed_thoughts)``;
    * ``mean_thoughts_after_refiner``: ``len(thoughts)``;
    * ``mean_removed_thoughts``: ``len(removed_thoughts)``;
    * ``mean_total_tokens``: :func:`total_tokens` (prompt + completion over all stages);
    * ``citation_share``: thoughts citing at least one policy over all final thoughts, pooled
      across records; ``None`` without thoughts.
    """
    items = list(records)
    ok = [record for record in items if record.status == "ok"]
    looped = [record for record in ok if record.stop_reason != "no_loop"]
    thoughts = [thought for record in ok for thought in record.thoughts]
    return {
        "n": len(items),
        "ok": len(ok),
        "failed": len(items) - len(ok),
        "mean_rounds": _mean([record.rounds for record in ok]),
        "consensus_rate": _share(sum(record.stop_reason == "consensus" for record in looped), len(looped)),
        "stop_reasons": dict(sorted(Counter(record.stop_reason for record in items).items())),
        "mean_thoughts_after_refiner": _mean([len(record.thoughts) for record in ok]),
        "mean_thoughts_before_refiner": _mean([len(record.thoughts) + len(record.removed_thoughts) for record in ok]),
        "mean_removed_thoughts": _mean([len(record.removed_thoughts) for record in ok]),
        "mean_total_tokens": _mean([total_tokens(record) for record in ok]),
        "citation_share": _share(sum(bool(thought.policies) for thought in thoughts), len(thoughts)),
    }


# --- pairwise -----------------------------------------------------------------------

_VERDICTS = ("a", "b", "tie")


def reconcile(first: str | None, second: str | None) -> str | None:
    """Combine the verdicts of the two presentation orders (already mapped back to a/b/tie).

    Both agree: that verdict; they disagree: ``"tie"`` (position bias cancels out); one is
    ``None`` (unparsed): the other; both ``None``: ``None`` (unscored).
    """
    for verdict in (first, second):
        if verdict is not None and verdict not in _VERDICTS:
            raise ValueError(f"verdict must be one of a, b, tie or None, got {verdict!r}")
    if first is None:
        return second
    if second is None or first == second:
        return first
    return "tie"


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
        "a_win_rate": _share(counts["a"], scored),
        "b_win_rate": _share(counts["b"], scored),
        "tie_rate": _share(counts["tie"], scored),
    }


# --- markdown -----------------------------------------------------------------------


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _score_cell(entry: Mapping[str, Any] | None) -> str:
    """``mean [low, high] (n=…, unscored=…)``."""
    if entry is None:
        return "–"
    interval = "" if entry["ci_low"] is None else f" [{_number(entry['ci_low'])}, {_number(entry['ci_high'])}]"
    return f"{_number(entry['mean'])}{interval} (n={entry['n_scored']}, unscored={entry['n_unscored']})"


def _score_section(tables: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    labels = list(tables)
    metrics = list(dict.fromkeys(metric for table in tables.values() for metric in table))
    rows = [[metric, *(_score_cell(tables[label].get(metric)) for label in labels)] for metric in metrics]
    return ["## Judge scores (mean [95% bootstrap CI])", "", *_table(["Metric", *labels], rows)]


_DELIBERATION_ROWS: tuple[tuple[str, str, str], ...] = (
    ("records", "n", "int"),
    ("ok", "ok", "int"),
    ("failed", "failed", "int"),
    ("mean rounds", "mean_rounds", "number"),
    ("consensus rate", "consensus_rate", "percent"),
    ("stop reasons", "stop_reasons", "reasons"),
    ("mean thoughts before refiner", "mean_thoughts_before_refiner", "number"),
    ("mean thoughts after refiner", "mean_thoughts_after_refiner", "number"),
    ("mean removed thoughts", "mean_removed_thoughts", "number"),
    ("mean total tokens", "mean_total_tokens", "tokens"),
    ("citation share", "citation_share", "percent"),
)


def _stat_cell(value: Any, kind: str) -> str:
    if kind == "int":
        return str(value)
    if kind == "percent":
        return _percent(value)
    if kind == "tokens":
        return _number(value, 0)
    if kind == "reasons":
        return ", ".join(f"{reason} {count}" for reason, count in value.items()) or "–"
    return _number(value)


def _deliberation_section(stats: Mapping[str, Mapping[str, Any]]) -> list[str]:
    labels = list(stats)
    rows = [[name, *(_stat_cell(stats[label].get(key), kind) for label in labels)] for name, key, kind in _DELIBERATION_ROWS]
    return ["## Deliberation statistics (means over ok records)", "", *_table(["Statistic", *labels], rows)]


def _pairs_section(pairs: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    header = ["A", "B", "A wins", "ties", "B wins", "unscored", "n"]
    rows = [
        [
            a,
            b,
            f"{_percent(rates['a_win_rate'])} ({rates['a_wins']})",
            f"{_percent(rates['tie_rate'])} ({rates['ties']})",
            f"{_percent(rates['b_win_rate'])} ({rates['b_wins']})",
            rates["unscored"],
            rates["n"],
        ]
        for (a, b), rates in pairs.items()
    ]
    return ["## Pairwise comparisons (rates over scored verdicts)", "", *_table(header, rows)]


def markdown_report(
    tables: Mapping[str, Mapping[str, Mapping[str, Any]]],
    stats: Mapping[str, Mapping[str, Any]],
    pairs: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> str:
    """The paper's Table 1 layout as markdown.

    ``tables`` maps an input label to its :func:`metric_table` (one column per label, one row
    per metric, cells ``mean [low, high] (n=…, unscored=…)``); ``stats`` maps a label to its
    :func:`deliberation_stats` (a second table); ``pairs`` maps ``(label_a, label_b)`` to its
    :func:`win_rates` (a third table). A section with nothing to show is left out.
    """
    sections = []
    if tables:
        sections.append(_score_section(tables))
    if stats:
        sections.append(_deliberation_section(stats))
    if pairs:
        sections.append(_pairs_section(pairs))
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


# --- plot ---------------------------------------------------------------------------


def _matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or :class:`PlotsUnavailableError` naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailableError(f"plotting needs matplotlib, which is not installed: {PLOTS_HINT}") from None
    return Figure, FigureCanvasAgg


def require_plots() -> None:
    """Raise :class:`PlotsUnavailableError` now (before any work) when matplotlib is missing."""
    _matplotlib()


def score_counts(records: Iterable[JudgedRecord], metric: str) -> list[int]:
    """How many records scored 1, 2, 3, 4 and 5 on ``metric`` (unscored left out)."""
    counts = Counter(record.judgement.scores.get(metric) for record in records)
    return [counts[score] for score in SCORE_RANGE]


def plot_distributions(tables_source: Mapping[str, Sequence[JudgedRecord]], path: str | os.PathLike[str]) -> Path:
    """Write a PNG with one panel per metric: grouped bars of the 1-5 score counts, one bar
    per input label. Uses matplotlib's Agg canvas directly (no pyplot, no global backend
    change); the file is written to a temporary name and moved into place with ``os.replace``.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    labels = list(tables_source)
    metrics = metric_names(record for records in tables_source.values() for record in records)
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    width = 0.8 / max(1, len(labels))
    positions = np.arange(len(SCORE_RANGE))
    for ax, metric in zip(axes, metrics):
        for index, label in enumerate(labels):
            offset = (index - (len(labels) - 1) / 2) * width
            ax.bar(positions + offset, score_counts(tables_source[label], metric), width, label=label)
        ax.set_title(metric)
        ax.set_xticks(positions, [str(score) for score in SCORE_RANGE])
        ax.set_xlabel("score")
        ax.set_ylabel("records")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if labels:
        axes[0].legend(fontsize="small")
    return _save_png(figure, Path(path))


def _save_png(figure: Any, path: Path) -> Path:
    temp = path.with_name(path.name + ".tmp")
    try:
        figure.savefig(temp, format="png", dpi=100)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
