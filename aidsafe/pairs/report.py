"""Evidence that the pairs are pairs: per pair and in total, the scorer's verdicts on both sides and
the judge's CoT faithfulness to the policies for chosen against rejected. The paper's argument
needs the rejected side clearly worse, not a near-duplicate; pairs that fail it are flagged and
left out of the DPO export by default."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .._stats import bootstrap_ci, share
from .judged import in_dpo_export, side_score  # in_dpo_export: re-exported (see __all__)
from .schema import PairRecord

__all__ = ["in_dpo_export", "pair_rows", "pair_stats", "pairs_markdown"]
# in_dpo_export (the DPO export rule) is defined in aidsafe.pairs.judged; re-exported here, where it was first public.


def _unscored(p: PairRecord) -> bool:
    """A pair without the judge's score on both sides (never judged, or a judge call that failed):
    ``aidsafe export --format dpo`` refuses it unless ``--unjudged`` (the rule of
    :func:`aidsafe.train.datasets.export_dpo`)."""
    return side_score(p, "chosen") is None or side_score(p, "rejected") is None


def pair_rows(pairs: Iterable[PairRecord]) -> list[dict[str, Any]]:
    """One row per pair with a rejected side: the judge's faithfulness of each side, the scorer's
    verdicts, the flags, whether it goes into the DPO export as it is (``in_dpo_export``), and
    whether it would but for missing judge scores (``needs_unjudged``: only with ``--unjudged``)."""
    return [
        {
            "id": p.id,
            "chosen_faithfulness": side_score(p, "chosen"),
            "rejected_faithfulness": side_score(p, "rejected"),
            "chosen_verdict": p.chosen_verdict.verdict if p.chosen_verdict else None,
            "rejected_verdict": p.tries[-1].verdict if p.tries else None,
            "flags": list(p.flags),
            "in_dpo_export": in_dpo_export(p) and not _unscored(p),
            "needs_unjudged": in_dpo_export(p) and _unscored(p),
        }
        for p in pairs
        if p.rejected is not None
    ]


def pair_stats(pairs: Iterable[PairRecord]) -> dict[str, Any]:
    """Totals: records by status, flags, the scorer's violation rate on each side, and (for judged
    pairs) the mean faithfulness of each side with the paired difference and its bootstrap interval."""
    items = list(pairs)
    with_both = [p for p in items if p.rejected is not None]
    judged = [(c, r) for c, r in ((side_score(p, "chosen"), side_score(p, "rejected")) for p in with_both) if c is not None and r is not None]
    diffs = [float(c - r) for c, r in judged]
    ci = bootstrap_ci(diffs)
    chosen_scored = [p for p in with_both if p.chosen_verdict is not None]
    p_values = [t.p_unsafe for p in with_both for t in p.tries[-1:] if t.p_unsafe is not None]
    return {
        "records": len(items),
        "status": dict(Counter(p.status for p in items)),
        "pairs": len(with_both),
        "flags": dict(Counter(f for p in items for f in p.flags)),
        "in_dpo_export": sum(in_dpo_export(p) and not _unscored(p) for p in items),
        "needs_unjudged": sum(in_dpo_export(p) and _unscored(p) for p in items),
        "mean_tries": share(sum(len(p.tries) for p in items), len(items)),
        "rejected_violation_rate": share(sum(bool(p.tries) and p.tries[-1].verdict == "unsafe" for p in with_both), len(with_both)),
        "chosen_violation_rate": share(sum(p.chosen_verdict is not None and p.chosen_verdict.verdict == "unsafe" for p in chosen_scored), len(chosen_scored)),
        "mean_rejected_p_unsafe": sum(p_values) / len(p_values) if p_values else None,
        "judged_pairs": len(judged),
        "mean_chosen_faithfulness": sum(c for c, _ in judged) / len(judged) if judged else None,
        "mean_rejected_faithfulness": sum(r for _, r in judged) / len(judged) if judged else None,
        "mean_difference": sum(diffs) / len(diffs) if diffs else None,
        "difference_ci": list(ci) if ci else None,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "–"
    return str(value).replace("|", "\\|")


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def pairs_markdown(label: str, stats: Mapping[str, Any], rows: list[dict[str, Any]], most: int = 20, judge: str | None = None) -> str:
    """The evidence as markdown: totals, then up to ``most`` pairs; ``judge`` names who judged the pairs."""
    rate = _rate
    ci = stats["difference_ci"]
    lines = [
        f"## Preference pairs: {label}",
        "",
        *([f"Judged by {judge}.", ""] if judge else []),
        "| statistic | value |",
        "| --- | --- |",
        f"| records | {stats['records']} ({', '.join(f'{k} {v}' for k, v in stats['status'].items())}) |",
        f"| pairs with a rejected side | {stats['pairs']} |",
        f"| in the DPO export (not flagged, judged) | {stats['in_dpo_export']} |",
        *([f"| not flagged but not judged: exported only with --unjudged | {stats['needs_unjudged']} |"]
          if stats.get("needs_unjudged") else []),
        f"| flags | {', '.join(f'{k} {v}' for k, v in stats['flags'].items()) or '–'} |",
        f"| mean ear-whisperer tries per prompt | {_cell(stats['mean_tries'])} |",
        f"| scorer: rejected side unsafe | {rate(stats['rejected_violation_rate'])} |",
        f"| scorer: chosen side unsafe | {rate(stats['chosen_violation_rate'])} |",
        f"| scorer: mean P(unsafe) of the rejected side | {_cell(stats['mean_rejected_p_unsafe'])} |",
        f"| judge: CoT faithfulness to policy, chosen / rejected ({stats['judged_pairs']} pairs) | "
        f"{_cell(stats['mean_chosen_faithfulness'])} / {_cell(stats['mean_rejected_faithfulness'])} |",
        f"| judge: chosen − rejected [95% bootstrap CI] | {_cell(stats['mean_difference'])}"
        + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + " |",
    ]
    if rows:
        lines += [
            "",
            "| id | faithfulness chosen | faithfulness rejected | scorer chosen | scorer rejected | flags | in DPO export |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {_cell(r['id'])} | {_cell(r['chosen_faithfulness'])} | {_cell(r['rejected_faithfulness'])} | {_cell(r['chosen_verdict'])} "
            f"| {_cell(r['rejected_verdict'])} | {_cell(r['flags'])} "
            f"| {'yes' if r['in_dpo_export'] else 'only with --unjudged' if r.get('needs_unjudged') else 'no'} |"
            for r in rows[:most]
        ]
        if len(rows) > most:
            lines.append(f"\n({len(rows) - most} more pairs in the --json output)")
    return "\n".join(lines) + "\n"
