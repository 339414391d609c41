"""``aidsafe eval report``: inspect logs of the tasks, side by side in the paper's Table 2 layout.

Each log gives one cell: the task's figure for one model, computed from the log's per-sample
scores (not from inspect's summary) and equal to inspect's own metric of the same name in the log.
With several epochs, each sample's epochs are first reduced to one score (the reduction inspect
wrote in the log: the mean over the scored epochs by default), so a sample counts once; the 95%
interval is a percentile bootstrap over samples (2,000 resamples, seed 0). Unscored samples (no
scored epoch: inspect's NaN) are left out of the figure and counted beside it, with how many of
them had no response (empty after the reasoning, or cut at the token limit).

Figures (names and definitions of the paper's Table 2):

- ``safety``: safe-response rate, % of the scored samples the grader found safe;
- ``overrefusal``: 1 - over-refusal, % of XSTest's safe prompts fully complied with; and the
  refusal rate (full or partial) on the unsafe contrasts;
- ``strongreject``: the safe-response rate, % of the scored replies the judge marked as refusals
  (1 - inspect_evals' jailbreak_rate); beside it, the StrongREJECT score (0-1, lower is safer);
- ``utility``: MMLU accuracy, %;
- ``cot_faithfulness``: the mean 1-5 grade.

A row is one figure under one setting: task, data (file name and SHA-256 of its bytes),
jailbreak, shots, CoT prompt, policy pack (name and content), grader model, rubric digest,
reasoning tag, and the rest of :data:`DETAILS` (system prompt, generation settings, epochs, the
samples covered, ...). Logs that differ in any of these go to different rows, never into one. A log whose samples were
graded by more than one grader or rubric is refused. Columns are models (the log's model name, or
a ``--label``); the same model on the same row twice keeps the later log (and says so).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..judge.stats import bootstrap_ci

__all__ = ["Cell", "eval_logs", "markdown_table", "plot_table", "report_table", "sample_values"]

# task -> [(metric, caption, scale)]
FIGURES: dict[str, list[tuple[str, str, float]]] = {
    "safety": [("safe_response_rate", "safe-response rate (%)", 100.0)],
    "overrefusal": [("compliance_on_safe", "1 − over-refusal (%)", 100.0), ("refusal_on_unsafe", "refusal rate on unsafe contrasts (%)", 100.0)],
    "strongreject": [("safe_response_rate", "safe-response rate (%)", 100.0), ("strongreject_score", "StrongREJECT score (0–1, lower is safer)", 1.0)],
    "utility": [("accuracy", "accuracy (%)", 100.0)],
    "cot_faithfulness": [("faithfulness", "CoT faithfulness to policy (1–5)", 1.0)],
}
SETTINGS = ("jailbreak", "shots", "cot", "policies", "grader", "rubric", "reasoning_tag")
"""The settings a row shows in its name; with :data:`DETAILS`, what a row is keyed by besides task and data."""
DETAILS = ("policies_sha256", "prompt_field", "system_prompt_sha256", "grader_structured", "jailbreaks_sha256", "fewshot_sha256",
           "temperature", "max_tokens", "epochs", "epochs_reducer", "samples_sha256")
"""What else changes a figure: the policy pack's content, the prompt field, the system prompt, how
the grade was asked for, the jailbreak and few-shot files' contents, the generation settings, the
epochs and their reducer, and which samples the figure covers (a --limit, a subset)."""


@dataclass
class Cell:
    """One model's figure on one row."""

    value: float | None
    ci: tuple[float, float] | None
    scored: int
    unscored: int
    no_response: int
    epochs: int
    log: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": list(self.ci) if self.ci else None, "scored": self.scored, "unscored": self.unscored,
                "no_response": self.no_response, "epochs": self.epochs, "log": self.log}


def eval_logs(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The log files named, and those inside named folders (``.eval`` and ``.json``), oldest first, each once."""
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
    unique: dict[str, str] = {}
    for name in found:
        unique.setdefault(os.path.realpath(name.removeprefix("file://")), name)
    return list(unique.values())


def _unscored(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any, task: str, metric: str, label: str | None) -> float | None:
    """One sample's (reduced) score as the number behind ``metric``; None when the metric does not
    cover the sample (an XSTest prompt of the other subset)."""
    if task == "overrefusal":
        wanted = "safe" if metric == "compliance_on_safe" else "unsafe"
        if label != wanted or not isinstance(value, dict):
            return None
        keys = ("full_compliance",) if wanted == "safe" else ("full_refusal", "partial_refusal")
        return sum(float(value.get(k, 0.0)) for k in keys)
    if task == "strongreject":
        if not isinstance(value, dict):
            return None
        key = "refusal" if metric == "safe_response_rate" else "score"
        return float(value[key]) if isinstance(value.get(key), int | float) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mean_reduce(values: list[Any]) -> Any:
    """inspect's default ``mean`` reducer: the mean over scored epochs (per key for a dict)."""
    kept = [v for v in values if not _unscored(v)]
    if not kept:
        return float("nan")
    if isinstance(kept[0], dict):
        return {k: sum(float(v[k]) for v in kept) / len(kept) for k in kept[0]}
    return sum(float(v) for v in kept) / len(kept)


def sample_values(log: Any, file: str) -> tuple[str, list[tuple[str, Any, dict[str, Any], bool]], int]:
    """``(scorer, [(id, reduced value, sample metadata, had no response)], epochs)``: one entry per
    sample, its epochs reduced as the log's reduction says (inspect's default mean where the log
    has none)."""
    samples = log.samples or []
    scorer = next(iter(samples[0].scores or {}), "")
    by_id: dict[str, list[Any]] = {}
    for sample in samples:
        by_id.setdefault(str(sample.id), []).append(sample)
    reduced: dict[str, Any] = {}
    for reduction in log.reductions or []:
        if reduction.scorer == scorer:
            reduced = {str(s.sample_id): s.value for s in reduction.samples}
    epochs = max((len(v) for v in by_id.values()), default=0)
    out = []
    for ident, epochs_of in by_id.items():
        scores = [(e.scores or {}).get(scorer) for e in epochs_of]
        value = reduced[ident] if ident in reduced else _mean_reduce([s.value if s is not None else None for s in scores])
        no_response = any(s is not None and s.reason == "no_response" for s in scores)
        out.append((ident, value, epochs_of[0].metadata or {}, no_response))
    if not out:
        raise InputError("holds no sample", file=file)
    return scorer, out, epochs


def _one(values: set[str], what: str, file: str) -> str:
    if len(values) > 1:
        raise InputError(f"its samples were graded by more than one {what} ({', '.join(sorted(values))}); "
                         "a figure must come from one: evaluate again with one", file=file)
    return next(iter(values), "-")


def _graded_by(log: Any, scorer: str, file: str) -> tuple[str, str]:
    graders: set[str] = set()
    rubrics: set[str] = set()
    for sample in log.samples or []:
        score = (sample.scores or {}).get(scorer)
        meta = (score.metadata or {}) if score is not None else {}
        if meta.get("grader"):
            graders.add(str(meta["grader"]))
        if meta.get("rubric"):
            rubrics.add(str(meta["rubric"]))
    return _one(graders, "grader model", file), _one(rubrics, "rubric", file)


def _label(labels: dict[str, str], file: str, used: set[str]) -> str | None:
    """The ``--label`` given for a log: by file name, by the path as written, or by the same file."""
    path = file.removeprefix("file://")
    for key, name in labels.items():
        if key in (str(Path(path).name), file) or (os.path.exists(key) and os.path.realpath(key) == os.path.realpath(path)):
            used.add(key)
            return name
    return None


def report_table(logs: Sequence[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"models": [...], "rows": [{"task", "benchmark", "data_sha256", SETTINGS..., "metric", "caption", "cells": {model: Cell}}]}``."""
    from inspect_ai.log import read_eval_log

    labels = labels or {}
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    models: list[str] = []
    used: set[str] = set()
    for file in logs:
        log = read_eval_log(file)
        task = log.eval.task.split("/")[-1]
        if task not in FIGURES:
            raise InputError(f"is a log of task {log.eval.task!r}, not of an aidsafe evaluation task", file=file)
        if log.status != "success" or not log.samples:
            raise InputError(f"holds no finished run (status {log.status}{': ' + log.error.message if log.error else ''})", file=file)
        meta = dict(log.eval.metadata or {})
        if "data_sha256" not in meta:
            raise InputError("was written by an older aidsafe eval (its log does not say what data, grader and settings made it): evaluate again",
                             file=file)
        model = _label(labels, file, used) or log.eval.model
        if model not in models:
            models.append(model)
        scorer, values, epochs = sample_values(log, file)
        grader, rubric = _graded_by(log, scorer, file)
        setting = {"jailbreak": meta.get("jailbreak"), "shots": meta.get("shots"), "cot": meta.get("cot"),
                   "policies": meta.get("policies"), "grader": grader if task != "utility" else None,
                   "rubric": rubric if rubric != "-" else meta.get("rubric"), "reasoning_tag": meta.get("reasoning_tag")}
        config = log.plan.config if log.plan else None
        task_args = log.eval.task_args or {}
        details = {key: meta.get(key) for key in DETAILS[:6]} | {
            "temperature": config.temperature if config else None,
            "max_tokens": (config.max_tokens if config else None) or task_args.get("max_tokens"),
            "epochs": epochs, "epochs_reducer": str(log.eval.config.epochs_reducer or "mean"),
        }
        for metric, caption, scale in FIGURES[task]:
            numbers: list[float] = []
            covered: list[str] = []
            unscored = no_response = 0
            for ident, value, sample_meta, empty in values:
                label = sample_meta.get("label")
                if task == "overrefusal" and label != ("safe" if metric == "compliance_on_safe" else "unsafe"):
                    continue
                covered.append(ident)
                number = None if _unscored(value) else _number(value, task, metric, label)
                if number is None:
                    unscored += 1
                else:
                    numbers.append(number)
                no_response += empty
            if not covered:
                continue  # a log of one XSTest subset has no figure for the other
            row_details = details | {"samples_sha256": hashlib.sha256("\n".join(sorted(covered)).encode("utf-8")).hexdigest()[:16]}
            key = (task, meta.get("benchmark"), meta.get("data_sha256"), *(str(setting[k]) for k in SETTINGS),
                   *(str(row_details[k]) for k in DETAILS), metric)
            row = rows.setdefault(key, {"task": task, "benchmark": meta.get("benchmark"), "data_sha256": meta.get("data_sha256"),
                                        **setting, "details": row_details, "metric": metric, "caption": caption, "cells": {}, "replaced": []})
            if model in row["cells"]:
                row["replaced"].append(row["cells"][model].log)
                print(f"aidsafe eval report: {file} replaces {row['cells'][model].log} for {model} on {task} ({meta.get('benchmark')}, "
                      f"{metric}): same data and settings", file=sys.stderr)
            ci = bootstrap_ci(numbers)
            row["cells"][model] = Cell(
                value=scale * sum(numbers) / len(numbers) if numbers else None,
                ci=(scale * ci[0], scale * ci[1]) if ci else None,
                scored=len(numbers), unscored=unscored, no_response=no_response, epochs=epochs, log=str(file),
            )
    unknown = [key for key in labels if key not in used]
    if unknown:
        raise InputError(f"--label {', '.join(unknown)} names no log given (use the log's file name or path)")
    return {"models": models, "rows": list(rows.values())}


def row_name(row: dict[str, Any]) -> str:
    """``task (benchmark, data digest; settings)`` for a table's first column."""
    parts = [f"{row['benchmark']} {str(row['data_sha256'] or 'hub')[:8]}"]
    for key in ("jailbreak", "shots", "cot", "policies", "reasoning_tag"):
        if row.get(key) not in (None, "None", False, "False"):
            parts.append(f"{key} {row[key]}")
    if row.get("grader") not in (None, "None"):
        parts.append(f"grader {row['grader']}")
    if row.get("rubric") not in (None, "None", "-"):
        parts.append(f"rubric {row['rubric']}")
    details = row.get("details") or {}
    parts.append(f"temperature {details.get('temperature')}, max_tokens {details.get('max_tokens')}")
    parts.append("setting #" + hashlib.sha256(json.dumps(details, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:8])
    return f"{row['task']} ({'; '.join(parts)})"


def _fmt(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    extra = "".join([f", {cell.unscored} unscored" if cell.unscored else "", f", {cell.no_response} no response" if cell.no_response else "",
                     f", {cell.epochs} epochs" if cell.epochs > 1 else ""])
    if cell.value is None:
        return f"– (0 scored{extra})"
    interval = f" [{cell.ci[0]:.2f}, {cell.ci[1]:.2f}]" if cell.ci else ""
    return f"{cell.value:.2f}{interval} (n {cell.scored}{extra})"


def markdown_table(table: dict[str, Any]) -> str:
    """Rows of benchmarks under their settings, a column per model: value [95% CI] (n scored, unscored, no response)."""
    models = table["models"]
    lines = ["| benchmark | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for row in table["rows"]:
        cells = [_fmt(row["cells"].get(m)) for m in models]
        lines.append(f"| {row_name(row)} | {row['caption']} | " + " | ".join(cells) + " |")
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
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.0 + 1.3 * len(rows) * max(1, len(models)) / 2), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        values, errors, names = [], [[], []], []
        for model in models:
            cell = row["cells"].get(model)
            value = cell.value if cell and cell.value is not None else 0.0
            low, high = cell.ci if cell and cell.ci else (value, value)
            values.append(value)
            errors[0].append(max(0.0, value - low))
            errors[1].append(max(0.0, high - value))
            names.append(f"{model} (n {cell.scored if cell else 0}{f', {cell.unscored} unscored' if cell and cell.unscored else ''})")
        ax.barh(names, values, xerr=errors, color="#4c72b0", capsize=3)
        ax.set_title(f"{row_name(row)}\n{row['caption']}", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
