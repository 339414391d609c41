"""Build the HTML report of one output file (and the judge's files for it)."""

from __future__ import annotations

import html
import json
import os
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import AidsafeError, InputError
from ..graph.plan import GraphPlan
from ..judge.schema import JudgedRecord, judged_only, judged_or_plain
from ..outputs import atomic_write_text, read_records
from ..pairing import PromptCheck
from ..records import Record
from ..summary import RunSummary, deliberation_stats

__all__ = ["build_report", "record_path", "write_report"]

PathLike = str | os.PathLike[str]


def record_path(record: Record, plan: GraphPlan) -> list[str]:
    """The graph nodes a record went through, read from the graph's plan (``compiled.plan``):
    ``__start__``, every node whose stage ran (a role node: its tokens in ``usage``; a loop agent:
    its loop's tokens and a deliberation turn of its own; a vote: its loop's tokens and any turn)
    and ``__end__`` when it finished. The failing node of a failed record is included."""
    failed = plan.by_stage(record.error.stage) if record.error is not None else None
    ran = set(record.usage) | ({failed.flow} if failed is not None else set())
    agents = {turn.agent for turn in record.deliberation}
    seen: list[str] = ["__start__"]
    for node in plan:
        if node.flow not in ran:
            continue
        if node.kind == "role" or node is failed or (node.kind == "agent" and node.agent in agents) or (node.kind == "vote" and record.deliberation):
            seen.append(node.id)
    if record.status == "ok":
        seen.append("__end__")
    return seen


def failed_node(record: Record, plan: GraphPlan) -> str | None:
    """The graph node where a failed record stopped: the plan's node of its ``error.stage``."""
    if record.error is None:
        return None
    node = plan.by_stage(record.error.stage)
    return node.id if node is not None else None


def _label(path: Path, taken: set[str]) -> str:
    label, n = path.stem, 2
    while label in taken:
        label, n = f"{path.stem}-{n}", n + 1
    taken.add(label)
    return label


def _judged(paths: Sequence[PathLike], ids: Mapping[str, Record]) -> tuple[list[str], dict[str, dict[str, dict[str, Any]]]]:
    """Judgements per judge label, per record id; a judged file with a record the output lacks, or
    whose record names another prompt under the same id (:mod:`aidsafe.pairing`), is refused."""
    labels: list[str] = []
    by_label: dict[str, dict[str, dict[str, Any]]] = {}
    taken: set[str] = set()
    for path in paths:
        label = _label(Path(path), taken)
        labels.append(label)
        found: dict[str, dict[str, Any]] = {}
        check = PromptCheck("the output", os.fspath(path))
        for record in read_records(path, judged_only, what="a judged record (aidsafe judge's output)"):
            if record.id not in ids:
                raise InputError(f"record id {record.id!r} is not in the output being reported; judge that output", file=path)
            if check.pair(record.id, ids[record.id], record):
                found[record.id] = record.judgement.model_dump(mode="json", exclude_none=True)
        check.raise_if_any(file=path)
        by_label[label] = found
    return labels, by_label


def _graph_pictures(graphs: Mapping[str, tuple[str, str, dict[str, str]]], graph_file: PathLike | None
                    ) -> tuple[dict[str, str], dict[str, GraphPlan], dict[str, str], dict[str, str]]:
    """An SVG per graph name (compiled with the fake backend: no model is needed), its plan (the
    nodes a record's path is read from), why a picture is missing (a graph file that is not
    shipped: pass ``graph_file``), and the role of each role node's ``usage`` key (for tokens per role)."""
    from ..graph.draw import compile_to_draw, svg

    pictures: dict[str, str] = {}
    plans: dict[str, GraphPlan] = {}
    missing: dict[str, str] = {}
    roles: dict[str, str] = {}
    for name, (spec, policies, models) in graphs.items():
        try:
            compiled = compile_to_draw(spec, policies)
        except AidsafeError as exc:
            missing[name] = f"graph {name!r} could not be drawn ({exc}); pass its file with --graph"
            continue
        if graph_file is not None and compiled.spec.name != name:
            missing[name] = f"--graph {graph_file} is graph {compiled.spec.name!r}, not {name!r}"
            continue
        pictures[name] = svg(compiled, models=models)  # the models of the run, not the drawing's
        plans[name] = compiled.plan
        roles.update({node.flow: node.role for node in compiled.plan if node.kind == "role" and node.role is not None})
    return pictures, plans, missing, roles


def _summary(records: Sequence[Record], roles: Mapping[str, str], judges: Sequence[str],
             judgements: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    run = RunSummary()
    for record in records:
        run.add(record, roles)
    stats = deliberation_stats(records)
    ok = [r for r in records if r.status == "ok"]
    removed = Counter(t.reason for r in ok for t in r.removed_thoughts)
    cited = Counter(p for r in ok for t in r.thoughts for p in t.policies)
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    for label in judges:
        per_metric: dict[str, list[int]] = {}
        unscored: Counter[str] = Counter()
        for judgement in judgements[label].values():
            for metric, value in judgement.get("scores", {}).items():
                if value is None:
                    unscored[metric] += 1
                else:
                    per_metric.setdefault(metric, []).append(int(value))
        scores[label] = {
            metric: {"mean": sum(v) / len(v) if v else None, "n": len(v), "unscored": unscored[metric]}
            for metric, v in sorted({**{m: [] for m in unscored}, **per_metric}.items())
        }
    return {
        "records": len(records),
        "ok": run.ok,
        "failed": run.failed,
        "failures": dict(run.failures.most_common()),
        "stop_reasons": dict(run.stop_reasons.most_common()),
        "rounds": dict(sorted(Counter(str(r.rounds) for r in records).items(), key=lambda kv: int(kv[0]))),
        "thoughts_before_refiner": sum(len(r.thoughts) + len(r.removed_thoughts) for r in ok),
        "thoughts_after_refiner": sum(len(r.thoughts) for r in ok),
        "mean_thoughts_before_refiner": stats["mean_thoughts_before_refiner"],
        "mean_thoughts_after_refiner": stats["mean_thoughts_after_refiner"],
        "removed_by_reason": dict(removed.most_common()),
        "tokens_by_role": {role: u["prompt_tokens"] + u["completion_tokens"] for role, u in sorted(run.by_role.items())},
        "citations_by_policy": dict(sorted(cited.items())),
        "faults": run.faults,
        "consensus_rate": stats["consensus_rate"],
        "judge_scores": scores,
    }


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element: ``<``, ``>`` and
    ``&`` are escaped, so no text can close the element or open another."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _asset(name: str) -> str:
    return resources.files("aidsafe.viewer").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def build_report(output: PathLike, judged: Sequence[PathLike] = (), *, graph: PathLike | None = None, title: str | None = None) -> str:
    """The HTML page for ``output`` (an ``aidsafe generate`` JSONL, judged or not) and the judge's
    files for it. ``graph`` is the graph file of a graph that is not shipped (for its picture)."""
    records: list[Record] = list(read_records(output, judged_or_plain))
    if not records:
        raise InputError("holds no record", file=output)
    ids = [r.id for r in records]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise InputError(f"record id {duplicates[0]!r} appears {Counter(ids)[duplicates[0]]} times; merge or repair the file first", file=output)
    judges, judgements = _judged(judged, {r.id: r for r in records})
    own = {r.id: r.judgement.model_dump(mode="json", exclude_none=True) for r in records if isinstance(r, JudgedRecord)}
    if own:
        label = _label(Path(output), set(judges))
        judges, judgements = [label, *judges], {label: own, **judgements}

    graphs: dict[str, tuple[str, str, dict[str, str]]] = {}
    for r in records:
        graphs.setdefault(r.graph, (str(graph) if graph is not None else r.graph, r.policy_set.name, r.models))
    pictures, plans, missing, roles = _graph_pictures(graphs, graph)

    rows: list[dict[str, Any]] = []
    for record in records:
        row = record.model_dump(mode="json", exclude_none=True)
        row.pop("judgement", None)
        plan = plans.get(record.graph)
        row["_path"] = record_path(record, plan) if plan is not None else []
        row["_failed_node"] = failed_node(record, plan) if plan is not None else None
        row["_scores"] = {label: judgements[label][record.id] for label in judges if record.id in judgements[label]}
        rows.append(row)
    data = {
        "source": os.path.basename(os.fspath(output)),
        "judged": [os.path.basename(os.fspath(p)) for p in judged],
        "judges": judges,
        "summary": _summary(records, roles, judges, judgements),
        "missing_pictures": missing,
        "records": rows,
    }
    nonce = secrets.token_urlsafe(16)
    templates = "\n".join(f'<template data-graph="{html.escape(name, quote=True)}">{picture}</template>' for name, picture in pictures.items())
    page_title = html.escape(title or f"aidsafe report: {os.path.basename(os.fspath(output))}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:">
<title>{page_title}</title>
<style>
{_asset("report.css")}
</style>
</head>
<body>
<header><h1>{page_title}</h1><p id="subtitle"></p></header>
<main>
<section id="summary" aria-label="run summary"></section>
<section id="browser" aria-label="records">
  <div id="filters">
    <input id="search" type="search" placeholder="search id, prompt, response, thoughts" aria-label="search">
    <select id="f-status" aria-label="status"><option value="">any status</option></select>
    <select id="f-stop" aria-label="stop reason"><option value="">any stop reason</option></select>
    <select id="f-policy" aria-label="cited policy"><option value="">any cited policy</option></select>
    <select id="f-metric" aria-label="judge metric"><option value="">no score filter</option></select>
    <select id="f-op" aria-label="comparison"><option value="le">&le;</option><option value="ge">&ge;</option></select>
    <input id="f-score" type="number" min="1" max="5" step="1" value="" aria-label="score">
  </div>
  <p id="count"></p>
  <div id="layout"><ol id="list"></ol><article id="detail"><p class="hint">Open a record to see its deliberation timeline.</p></article></div>
  <button id="more" type="button" hidden>show more</button>
</section>
</main>
{templates}
<script type="application/json" id="aidsafe-data">{_json_for_script(data)}</script>
<script nonce="{nonce}">
{_asset("report.js")}
</script>
</body>
</html>
"""


def write_report(output: PathLike, judged: Sequence[PathLike] = (), destination: PathLike = "report.html", *,
                 graph: PathLike | None = None, title: str | None = None) -> Path:
    """Write :func:`build_report` to ``destination`` (atomically) and return its path."""
    page = build_report(output, judged, graph=graph, title=title)
    path = Path(destination)
    atomic_write_text(path, page)
    return path
