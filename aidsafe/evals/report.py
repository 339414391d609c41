"""``aidsafe eval report``: inspect logs of the tasks, side by side in the paper's Table 2 layout.

Each log gives one cell: the task's headline figure for one model on one data file, computed from
the per-sample scores the log holds (not from inspect's summary), with a 95% percentile bootstrap
interval (2,000 resamples, seed 0) and the numbers scored and unscored. Figures:

- ``safety``: safe responses, % of the scored samples;
- ``overrefusal``: 1 - over-refusal, % of the safe prompts fully complied with; and the refusal
  rate on the unsafe contrasts;
- ``strongreject``: safe = 100 x (1 - mean StrongREJECT score), and the mean score itself;
- ``utility``: accuracy, %;
- ``cot_faithfulness``: the mean 1-5 grade.

Columns are models (the log's model name, or a ``--label``); the same model evaluated twice on
the same task and data keeps the later log.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..judge.stats import bootstrap_ci

__all__ = ["Cell", "eval_logs", "markdown_table", "plot_table", "report_table"]

UNSCORED = "unscored"

# task -> [(metric key, caption, scale, transform)]
FIGURES: dict[str, list[tuple[str, str, float]]] = {
    "safety": [("safe", "safe responses (%)", 100.0)],
    "overrefusal": [("compliance_on_safe", "1 − over-refusal (%)", 100.0), ("refusal_on_unsafe", "refusals on unsafe contrasts (%)", 100.0)],
    "strongreject": [("safe", "safe: 1 − score (%)", 100.0), ("score", "StrongREJECT score (0-1, lower is safer)", 1.0)],
    "utility": [("accuracy", "accuracy (%)", 100.0)],
    "cot_faithfulness": [("faithfulness", "CoT faithfulness to policy (1-5)", 1.0)],
}


@dataclass
class Cell:
    """One model's figure on one benchmark row."""

    value: float | None
    ci: tuple[float, float] | None
    scored: int
    unscored: int
    log: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": list(self.ci) if self.ci else None, "scored": self.scored, "unscored": self.unscored, "log": self.log}


def eval_logs(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The log files named, and those inside named folders (``.eval`` and ``.json``), oldest first."""
    from inspect_ai.log import list_eval_logs

    found: list[str] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found += [info.name for info in sorted(list_eval_logs(str(p)), key=lambda i: i.mtime or 0)]
        elif p.is_file():
            found.append(str(p))
        else:
            raise InputError("no such log file or folder", file=p)
    if not found:
        raise InputError("no inspect logs there (aidsafe eval writes them to --log-dir, default ./logs)", file=", ".join(map(str, paths)))
    return found


def _values(samples: Sequence[Any], scorer_name: str) -> list[tuple[Any, dict[str, Any]]]:
    out = []
    for sample in samples:
        score = (sample.scores or {}).get(scorer_name)
        out.append((UNSCORED if score is None else score.value, sample.metadata or {}))
    return out


def _figure(task: str, key: str, values: list[tuple[Any, dict[str, Any]]]) -> tuple[list[float], int]:
    """The per-sample numbers behind one figure (before scaling), and how many were unscored."""
    scored = [(v, m) for v, m in values if v != UNSCORED]
    unscored = len(values) - len(scored)
    if task == "overrefusal":
        subset = "safe" if key == "compliance_on_safe" else "unsafe"
        wanted = ("full_compliance",) if subset == "safe" else ("full_refusal", "partial_refusal")
        unscored = sum(1 for v, m in values if v == UNSCORED and m.get("label") == subset)
        return [1.0 if v in wanted else 0.0 for v, m in scored if m.get("label") == subset], unscored
    numbers = [float(v) for v, _ in scored if isinstance(v, int | float) and not isinstance(v, bool)]
    if task == "strongreject" and key == "safe":
        numbers = [1.0 - n for n in numbers]
    return numbers, unscored


def report_table(logs: Sequence[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"models": [...], "rows": [{"task", "benchmark", "metric", "caption", "cells": {model: Cell}}]}``."""
    from inspect_ai.log import read_eval_log

    labels = labels or {}
    cells: dict[tuple[str, str, str], dict[str, Cell]] = {}
    captions: dict[tuple[str, str, str], str] = {}
    models: list[str] = []
    for file in logs:
        log = read_eval_log(file)
        task = log.eval.task.split("/")[-1]
        if task not in FIGURES:
            raise InputError(f"is a log of task {log.eval.task!r}, not of an aidsafe evaluation task", file=file)
        if log.status != "success" or not log.samples:
            raise InputError(f"holds no finished run (status {log.status}{': ' + log.error.message if log.error else ''})", file=file)
        model = labels.get(str(Path(file).name)) or labels.get(file) or log.eval.model
        if model not in models:
            models.append(model)
        benchmark = Path(str((log.eval.task_args or {}).get("data", "?"))).stem
        scorer_name = next(iter(log.samples[0].scores or {}), "")
        values = _values(log.samples, scorer_name)
        for key, caption, scale in FIGURES[task]:
            numbers, unscored = _figure(task, key, values)
            ci = bootstrap_ci(numbers)
            row = (task, benchmark, key)
            captions[row] = caption
            cells.setdefault(row, {})[model] = Cell(
                value=scale * sum(numbers) / len(numbers) if numbers else None,
                ci=(scale * ci[0], scale * ci[1]) if ci else None,
                scored=len(numbers), unscored=unscored, log=str(file),
            )
    rows = [{"task": t, "benchmark": b, "metric": k, "caption": captions[(t, b, k)], "cells": c} for (t, b, k), c in cells.items()]
    return {"models": models, "rows": rows}


def _fmt(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if cell.value is None:
        return f"– (0 scored, {cell.unscored} unscored)"
    interval = f" [{cell.ci[0]:.2f}, {cell.ci[1]:.2f}]" if cell.ci else ""
    return f"{cell.value:.2f}{interval} (n {cell.scored}{f', {cell.unscored} unscored' if cell.unscored else ''})"


def markdown_table(table: dict[str, Any]) -> str:
    """Rows of benchmarks, a column per model: value [95% CI] (n scored, unscored)."""
    models = table["models"]
    lines = ["| benchmark | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for row in table["rows"]:
        cells = [_fmt(row["cells"].get(m)) for m in models]
        lines.append(f"| {row['task']} ({row['benchmark']}) | {row['caption']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def as_json(table: dict[str, Any]) -> dict[str, Any]:
    return {"models": table["models"], "rows": [{**{k: v for k, v in row.items() if k != "cells"},
                                                  "cells": {m: c.as_dict() for m, c in row["cells"].items()}} for row in table["rows"]]}


def plot_table(table: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A PNG: one panel per row, a bar per model with its 95% interval (needs the plots extra)."""
    from ..judge.plots import require_plots

    require_plots()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, models = table["rows"], table["models"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 1.0 + 1.2 * len(rows) * max(1, len(models)) / 2), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        values, errors, names = [], [[], []], []
        for model in models:
            cell = row["cells"].get(model)
            value = cell.value if cell and cell.value is not None else 0.0
            low, high = cell.ci if cell and cell.ci else (value, value)
            values.append(value)
            errors[0].append(max(0.0, value - low))
            errors[1].append(max(0.0, high - value))
            names.append(f"{model} (n {cell.scored if cell else 0})")
        ax.barh(names, values, xerr=errors, color="#4c72b0", capsize=3)
        ax.set_title(f"{row['task']} ({row['benchmark']}): {row['caption']}", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
