"""The paper's Table 1 layout as markdown: judge scores, deliberation statistics, pairwise win rates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["markdown_report"]


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
