"""What the judge writes: a judged record is the generated record plus a ``judgement``."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from ..pairs.schema import PairRecord
from ..records import Record, Usage

__all__ = ["METRICS", "Citations", "JudgedRecord", "Judgement", "Metric", "PairVerdict", "judged_only", "judged_or_plain"]

Metric = Literal[
    "relevance",
    "coherence",
    "completeness",
    "faithfulness_cot_policy",
    "faithfulness_response_policy",
    "faithfulness_response_cot",
]
METRICS: tuple[Metric, ...] = get_args(Metric)
"""The paper's six auto-grader metrics (Table 1), each scored 1-5."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class JudgedRecord(Record):
    """A generated record with the judge's verdict."""

    judgement: Judgement


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


class PairVerdict(_Out):
    """One pairwise comparison of two records for the same prompt (both orders asked)."""

    id: str
    a: str
    """Label of the first output (e.g. its file name)."""
    b: str
    winner: Literal["a", "b", "tie"] | None
    """Both orders agree: that verdict; they disagree: ``tie`` (position bias cancels out); one
    order unparsed: the other; both unparsed: None (unscored)."""
    verdicts: list[str | None]
    """Raw verdicts in the two orders, mapped back to a/b/tie (None = unparsed)."""
    judge_model: str | None = None
    """``backend:model`` of the grader (None in verdicts that predate it)."""
    rubric: str | None = None
    """Template file name and hash of the pairwise rubric."""


def judged_or_plain(data: dict[str, Any]) -> type[Record]:
    """Read a line as a :class:`JudgedRecord` when it has a ``judgement``, else as a plain :class:`Record`
    (a :data:`~aidsafe.outputs.LineModel` for :func:`~aidsafe.outputs.read_records`)."""
    return JudgedRecord if "judgement" in data else Record


def judged_only(data: dict[str, Any]) -> type[JudgedRecord]:
    """Read a line as a :class:`JudgedRecord`; a plain record is refused."""
    if "judgement" not in data:
        raise ValueError("no 'judgement'; run aidsafe judge first")
    return JudgedRecord
