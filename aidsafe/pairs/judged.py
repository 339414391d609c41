"""A judged preference pair (what ``aidsafe judge PAIRS.jsonl`` writes) and the rules that read it.

The pair concepts live here, below the judge: :mod:`aidsafe.judge` imports them, never the
reverse. They are the judgement of one side (:class:`Judgement`, the same schema as a judged
record's), the judged pair, the metric a pair's rejected side must be worse on
(:data:`PAIR_METRIC`), the flags a judged pair gets by it (:func:`judged_flags`), and which pairs
go into the DPO export (:func:`in_dpo_export`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..records import Usage
from .schema import PairRecord, _Out

__all__ = [
    "PAIR_METRIC",
    "Citations",
    "JudgedPair",
    "Judgement",
    "PairJudgement",
    "both_sides_judged",
    "in_dpo_export",
    "judged_flags",
    "judged_pair_or_plain",
    "side_score",
]

PAIR_METRIC = "faithfulness_cot_policy"
"""The metric a pair's rejected side must be worse on: the paper's argument is about the CoT's faithfulness to the policies."""


class Citations(_Out):
    """Policy citations checked without a model."""

    thoughts: int
    """Thoughts in the refined chain of thought."""
    citing: int
    """Thoughts that cite at least one policy id."""
    share_citing: float | None
    """``citing / thoughts`` (None without thoughts)."""
    unknown_ids: list[str] = Field(default_factory=list)
    """Cited ids that are not in the record's policy pack."""
    applicable: list[str] | None = None
    """Policy ids the judge says the prompt's intents call for (None when the judge gave none)."""
    coverage: float | None = None
    """Share of ``applicable`` policies that the chain of thought cites (None when unknown)."""


class Judgement(_Out):
    """The judge's scores for one record. A metric whose score could not be parsed is ``None``
    and listed in ``unscored``: never a default score."""

    judge_model: str
    rubric: str
    """Template file name and hash of the rubric used."""
    rationale: str | None = None
    """The judge's reasoning, written before its scores."""
    scores: dict[str, int | None]
    """Metric -> 1..5, or None when unscored."""
    unscored: list[str] = Field(default_factory=list)
    citations: Citations
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None
    """Why metrics are unscored (the call failed, the reply did not parse), with the raw reply cut short."""


class PairJudgement(_Out):
    """The judge's scores for both sides of a preference pair."""

    chosen: Judgement
    rejected: Judgement | None = None
    """None when the prompt yielded no rejected side."""


class JudgedPair(PairRecord):
    """A preference pair with both sides judged; ``flags`` gains ``rejected_not_worse`` (the judge
    rates the rejected side's CoT faithfulness to the policies no lower than the chosen's) or
    ``unjudged`` (a side's faithfulness could not be scored)."""

    judgement: PairJudgement | None
    """None for a record without a chosen side (a skipped or failed generation record): it is
    kept, so the judged file has every record of the pairs file."""


def judged_pair_or_plain(data: dict[str, Any]) -> type[PairRecord]:
    """Read a line as a :class:`JudgedPair` when it has a ``judgement``, else as a plain
    :class:`PairRecord` (a :data:`~aidsafe.outputs.LineModel` for :func:`~aidsafe.outputs.read_records`)."""
    return JudgedPair if "judgement" in data else PairRecord


def both_sides_judged(pair: PairRecord) -> bool:
    """Whether ``aidsafe judge`` graded both sides of the pair."""
    return isinstance(pair, JudgedPair) and pair.judgement is not None and pair.judgement.rejected is not None


def side_score(pair: PairRecord, side: Literal["chosen", "rejected"]) -> int | None:
    """The judge's :data:`PAIR_METRIC` score of one side (None when unjudged or unscored)."""
    if not isinstance(pair, JudgedPair) or pair.judgement is None:
        return None
    judgement = pair.judgement.chosen if side == "chosen" else pair.judgement.rejected
    return judgement.scores.get(PAIR_METRIC) if judgement is not None else None


def judged_flags(flags: list[str], chosen: Judgement, rejected: Judgement | None) -> list[str]:
    """A pair's flags once its sides are judged: the judge's flags of an earlier judgement dropped,
    then ``unjudged`` when a side's :data:`PAIR_METRIC` is unscored, or ``rejected_not_worse`` when
    the rejected side scores no lower than the chosen one (no rejected side: no judge flag)."""
    kept = [f for f in flags if f not in ("rejected_not_worse", "unjudged")]
    if rejected is not None:
        ours, theirs = chosen.scores.get(PAIR_METRIC), rejected.scores.get(PAIR_METRIC)
        if ours is None or theirs is None:
            kept.append("unjudged")
        elif theirs >= ours:
            kept.append("rejected_not_worse")
    return kept


def in_dpo_export(pair: PairRecord, *, include_flagged: bool = False) -> bool:
    """Whether a pair goes into the DPO export: a pair with both sides, and no flag unless asked."""
    return pair.status == "ok" and pair.chosen is not None and pair.rejected is not None and (include_flagged or not pair.flags)
