"""A PNG of the judge's score distributions (``aidsafe compare --plot``; the ``plots`` extra)."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import AidsafeError
from .schema import JudgedRecord
from .stats import SCORE_RANGE, metric_names

__all__ = ["PLOTS_HINT", "PlotsUnavailableError", "plot_distributions", "require_plots", "score_counts"]

PLOTS_HINT = "pip install 'aidsafe[plots]'"


class PlotsUnavailableError(AidsafeError):
    """matplotlib is not installed (it comes with the ``plots`` extra)."""


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


def plot_distributions(tables_source: Mapping[str, Sequence[JudgedRecord]], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write a PNG with one panel per metric: grouped bars of the 1-5 score counts, one bar
    per input label, under ``title`` (``aidsafe compare`` names the judge there). Uses
    matplotlib's Agg canvas directly (no pyplot, no global backend change); the file is
    written to a temporary name and moved into place with ``os.replace``.
    """
    import numpy as np

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
    for ax, metric in zip(axes, metrics, strict=False):  # the grid may have spare panels (hidden below)
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
    if title:
        figure.suptitle(title, fontsize="medium")
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
