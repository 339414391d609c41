"""Statistics over generation records: the run summary of ``aidsafe generate`` and the
deliberation figures that ``aidsafe compare`` shows next to the judge's scores."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .outputs import read_records
from .records import Record

__all__ = ["JobTotals", "RunSummary", "deliberation_stats", "summarize_output", "total_tokens"]

_COUNTS = ("prompt_tokens", "completion_tokens", "calls", "retries", "cached", "truncated")


def _add(slot: dict[str, int], usage: Any) -> None:
    for key in _COUNTS:
        slot[key] = slot.get(key, 0) + int(getattr(usage, key))


class JobTotals(dict[str, Any]):
    """The summary of a file job whose figures are a flat mapping (``aidsafe judge``, ``aidsafe
    pairs``): it reads as the dict it is (``summary["records"]``, ``json.dumps(summary)``) and, as
    every job's summary does, gives :meth:`as_dict` (what the sidecar and the CLI print)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self)

    @property
    def data(self) -> dict[str, Any]:
        """The figures as a plain dict (the older spelling of :meth:`as_dict`)."""
        return dict(self)


@dataclass
class RunSummary:
    """Totals over the records of an output file (every record, after a resume too)."""

    output: str | None = None
    ok: int = 0
    failed: int = 0
    stop_reasons: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    """Tokens, calls, retries, cache hits and truncated replies per stage (graph node)."""
    by_role: dict[str, dict[str, int]] = field(default_factory=dict)
    """Tokens per role; deliberation turns counted per agent."""
    faults: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Failed records by error kind (model_error, invalid_reply, agent_refusal, graph_error)."""
    run: dict[str, Any] = field(default_factory=dict)
    """What this invocation did: prompts run, skipped (resumed), seconds, rates, cache hits."""

    def add(self, record: Record, roles: Mapping[str, str] | None = None) -> None:
        """Count one record; ``roles`` maps step-node ids to their role names."""
        if record.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            self.failures[record.error.kind if record.error else "graph_error"] += 1
        self.stop_reasons[record.stop_reason] += 1
        self.rounds += record.rounds
        self.faults += len(record.faults)
        for stage, usage in record.usage.items():
            _add(self.usage.setdefault(stage, {}), usage)
            if roles and stage in roles:
                _add(self.by_role.setdefault(roles[stage], {}), usage)
        for turn in record.deliberation:
            _add(self.by_role.setdefault(turn.agent, {}), turn.usage)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def retries(self) -> int:
        return sum(u.get("retries", 0) for u in self.usage.values())

    @property
    def truncated(self) -> int:
        """Replies cut off at their token budget, over every stage."""
        return sum(u.get("truncated", 0) for u in self.usage.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "records": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "stop_reasons": dict(self.stop_reasons),
            "failures": dict(self.failures),
            "mean_rounds": round(self.rounds / self.total, 3) if self.total else 0.0,
            "faults": self.faults,
            "retries": self.retries,
            "truncated": self.truncated,
            "usage_by_stage": self.usage,
            "usage_by_role": self.by_role,
            "run": self.run,
        }

    def __str__(self) -> str:
        d = self.as_dict()
        stops = ", ".join(f"{k} {v}" for k, v in sorted(d["stop_reasons"].items())) or "none"
        tokens = ", ".join(f"{k} {v['prompt_tokens']}+{v['completion_tokens']}" for k, v in d["usage_by_stage"].items()) or "none"
        run = d["run"]
        this_run = (
            f"; this run: {run.get('prompts', 0)} prompts in {run.get('seconds', 0):.1f} s, {run.get('skipped', 0)} already done"
            if run
            else ""
        )
        endpoints = run.get("endpoints") or {} if run else {}
        by_endpoint = (
            "; calls by endpoint: " + ", ".join(
                f"{url} {e['calls']} ({e['overloaded']} backpressure, {e['failed']} failed{', drained ' + str(e['drained']) + 'x' if e['drained'] else ''}"
                f"{'' if e['up'] else ', down'})" for url, e in endpoints.items())
            if len(endpoints) > 1 or any(e["overloaded"] or e["failed"] for e in endpoints.values())
            else ""
        )
        wire = ""
        for url, note in (run.get("structured_output") or {}).items() if run else ():
            if note.get("mode") == "json_object":
                wire += f"; {url} takes json_object + schema ({note.get('source')})"
        for where, note in (run.get("system_role") or {}).items() if run else ():
            wire += f"; {where}: system text merged into the user turn ({note.get('source')})"
        return (
            f"records: {d['records']} (ok {d['ok']}, failed {d['failed']}); stop reasons: {stops}; "
            f"mean rounds: {d['mean_rounds']}; faults: {d['faults']}; retries: {d['retries']}; "
            f"replies cut at max_tokens: {d['truncated']}; "
            f"tokens (prompt+completion) by stage: {tokens}{this_run}{by_endpoint}{wire}"
        )


def summarize_output(path: str | Path, roles: Mapping[str, str] | None = None) -> RunSummary:
    """Totals over every record of an output file (streamed: memory stays flat).

    ``roles`` maps step-node ids to their role names, for the tokens per role.
    """
    summary = RunSummary(output=str(path))
    for record in read_records(path, Record):
        summary.add(record, roles)
    return summary


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
      across records; ``None`` without thoughts;
    * ``first_turn_agreement``: share of the ok records with deliberation turns whose first turn
      agreed (with the seed, in a sequential loop: a consensus nobody argued for);
    * ``zero_edit_consensus``: share of the ok records with deliberation turns that stopped at
      consensus although no turn changed anything (every turn agreed).
    """
    items = list(records)
    ok = [record for record in items if record.status == "ok"]
    looped = [record for record in ok if record.stop_reason != "no_loop"]
    thoughts = [thought for record in ok for thought in record.thoughts]
    deliberated = [record for record in ok if record.deliberation]
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
        "first_turn_agreement": _share(sum(record.deliberation[0].agreed for record in deliberated), len(deliberated)),
        "zero_edit_consensus": _share(
            sum(record.stop_reason == "consensus" and all(turn.agreed for turn in record.deliberation) for record in deliberated),
            len(deliberated),
        ),
    }
