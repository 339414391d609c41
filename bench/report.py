"""The Markdown table of a run's medians: each benchmark gives its rows, this lays them out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["Row", "fmt", "table"]


class Row(NamedTuple):
    """One line of the table; ``met`` is None where the metric has no target."""

    bench: str
    metric: str
    value: str
    target: str = ""
    met: bool | None = None


def fmt(x: Any, nd: int = 2) -> str:
    """A float with thousands separators and ``nd`` decimals; anything else as ``str``."""
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _line(row: Row) -> str:
    mark = "" if row.met is None else ("yes" if row.met else "**no**")
    return f"| {row.bench} | {row.metric} | {row.value} | {row.target} | {mark} |"


def table(results: dict[str, Any], rows_of: Mapping[str, Callable[[dict[str, Any]], list[Row]]]) -> str:
    """The table of ``results``, one benchmark after another in ``rows_of``'s order.

    A last row gives the CPU share other processes used during each benchmark, where measured.
    """
    rows = [row for name, rows_fn in rows_of.items() if name in results for row in rows_fn(results[name])]
    busy = {k: v.get("foreign_cpu_share") for k, v in results.items() if v.get("foreign_cpu_share") is not None}
    if busy:
        rows.append(Row("all", "CPU share used by other processes during each (0 = quiet machine)",
                        ", ".join(f"{k} {100 * v:.0f}%" for k, v in busy.items())))
    header = ["| benchmark | metric | median | target | met |", "| --- | --- | --- | --- | --- |"]
    return "\n".join(header + [_line(row) for row in rows])
