"""The comparison of :func:`aidsafe.judge.comparison.compare` as markdown, in the paper's Table 1
layout: inputs, judge scores, paired differences from the baseline, deliberation statistics,
pairwise win rates and the agreement between graders. The score and difference tables name their
judge (model and rubric digest); inputs of different judges (``--allow-mixed-judges``) get one pair
of tables per judge, never one across judges."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["judge_name", "markdown_report"]


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


def _signed(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _inputs_section(common: int, inputs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = [[label, i["records"], i["ok"], i["in_common"], i["dropped"]] for label, i in inputs.items()]
    return [
        f"## Inputs (compared over the {common} ids that are ok in every input)",
        "",
        *_table(["Input", "records", "ok", "in the common set", "dropped"], rows),
    ]


def judge_name(judge: Mapping[str, Any]) -> str:
    """``judge model M, rubric digest D (name@D)`` of a comparison's ``judges`` entry."""
    rubric = judge.get("rubric")
    shown = f" ({rubric})" if rubric and rubric not in ("unknown", judge["rubric_digest"]) else ""
    return f"judge model {judge['judge_model']}, rubric digest {judge['rubric_digest']}{shown}"


def _judged_by(judge: Mapping[str, Any] | None, who: str = "Judged") -> list[str]:
    return [] if judge is None else [f"{who} by {judge_name(judge)}.", ""]


def _score_section(tables: Mapping[str, Mapping[str, Mapping[str, Any]]], judge: Mapping[str, Any] | None = None, part: str = "") -> list[str]:
    labels = list(tables)
    metrics = list(dict.fromkeys(metric for table in tables.values() for metric in table))
    rows = [[metric, *(_score_cell(tables[label].get(metric)) for label in labels)] for metric in metrics]
    return [f"## Judge scores{part} (mean [95% bootstrap CI])", "", *_judged_by(judge), *_table(["Metric", *labels], rows)]


def _difference_cell(entry: Mapping[str, Any] | None) -> str:
    """``+0.42 [0.30, 0.55] (+10.9%, n=…)``."""
    if entry is None:
        return "–"
    interval = "" if entry["ci_low"] is None else f" [{_number(entry['ci_low'])}, {_number(entry['ci_high'])}]"
    gain = "–" if entry["relative_gain"] is None else f"{100 * entry['relative_gain']:+.1f}%"
    return f"{_signed(entry['mean_difference'])}{interval} ({gain}, n={entry['n']})"


def _differences_section(
    baseline: str, differences: Mapping[str, Mapping[str, Mapping[str, Any]]], judge: Mapping[str, Any] | None = None, part: str = ""
) -> list[str]:
    labels = list(differences)
    metrics = list(dict.fromkeys(metric for table in differences.values() for metric in table))
    rows = [[metric, *(_difference_cell(differences[label].get(metric)) for label in labels)] for metric in metrics]
    header = ["Metric", *(f"{label} − {baseline}" for label in labels)]
    return [
        f"## Differences from {baseline}{part} (paired over the ids both scored: mean [95% bootstrap CI] (relative gain, n))",
        "",
        *_judged_by(judge, "Both sides judged"),
        *_table(header, rows),
    ]


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
    ("first turn agreed", "first_turn_agreement", "percent"),
    ("consensus without any edit", "zero_edit_consensus", "percent"),
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
    return ["## Deliberation statistics (over the common ids)", "", *_table(["Statistic", *labels], rows)]


def _pairs_section(pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["A", "B", "grader", "A wins", "ties", "B wins", "unscored", "n"]
    rows = [
        [
            p["a"],
            p["b"],
            p["grader"],
            f"{_percent(p['a_win_rate'])} ({p['a_wins']})",
            f"{_percent(p['tie_rate'])} ({p['ties']})",
            f"{_percent(p['b_win_rate'])} ({p['b_wins']})",
            p["unscored"],
            p["n"],
        ]
        for p in pairs
    ]
    return ["## Pairwise comparisons (rates over scored verdicts)", "", *_table(header, rows)]


def _agreement_section(agreement: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["A", "B", "grader 1", "grader 2", "n", "agreement", "Cohen's kappa"]
    rows = [[g["a"], g["b"], g["grader_1"], g["grader_2"], g["n"], _percent(g["agreement"]), _number(g["kappa"], 3)] for g in agreement]
    return ["## Agreement between graders (same pairs, both scored)", "", *_table(header, rows)]


def markdown_report(comparison: Mapping[str, Any]) -> str:
    """The comparison document as markdown; a section with nothing to show is left out.

    Score cells read ``mean [low, high] (n=…, unscored=…)``; difference cells ``+d [low, high]
    (+gain%, n=…)``. With several ``judges``, a table of the judges comes first, then the score
    and difference tables of each judge in turn.
    """
    inputs = comparison["inputs"]
    sections = [_inputs_section(comparison["common"], inputs)]
    judges: list[Mapping[str, Any]] | None = comparison.get("judges")
    if judges is None:  # a document without judges (built by hand, or before compare named them)
        tables = {label: i["metrics"] for label, i in inputs.items() if i["metrics"]}
        if tables:
            sections.append(_score_section(tables))
        if comparison.get("differences"):
            sections.append(_differences_section(comparison["baseline"], comparison["differences"]))
    if judges and len(judges) > 1:
        sections.append([
            f"## Judges: {len(judges)} different judges (judge model or rubric digest)",
            "",
            "Scores of different judges are not comparable: each judge gets its own tables, and nothing is averaged "
            "or subtracted across judges.",
            "",
            *_table(["Judge", "judge model", "rubric digest", "rubric", "inputs"],
                    [[n, j["judge_model"], j["rubric_digest"], j["rubric"], ", ".join(j["inputs"])] for n, j in enumerate(judges, 1)]),
        ])
    count = len(judges or [])
    for index, judge in enumerate(judges or [], 1):
        part = f", judge {index} of {count}" if count > 1 else ""
        tables = {label: inputs[label]["metrics"] for label in judge["inputs"] if inputs[label]["metrics"]}
        if tables:
            sections.append(_score_section(tables, judge, part))
        if judge["differences"]:
            sections.append(_differences_section(judge["baseline"], judge["differences"], judge, part))
    stats = {label: i["deliberation"] for label, i in inputs.items()}
    if stats:
        sections.append(_deliberation_section(stats))
    if comparison.get("pairs"):
        sections.append(_pairs_section(comparison["pairs"]))
    if comparison.get("grader_agreement"):
        sections.append(_agreement_section(comparison["grader_agreement"]))
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"
