"""What the judge writes: a judged record is the generated record plus a ``judgement``
(:class:`~aidsafe.pairs.judged.Judgement`); a judged pair is in :mod:`aidsafe.pairs.judged`."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

# The judgement schema and the judged pair are pair concepts (aidsafe.pairs.judged, below the
# judge); re-exported here, where they were first public.
from ..pairs.judged import Citations, JudgedPair, Judgement, PairJudgement
from ..records import Record, WrittenBy

__all__ = [
    "METRICS",
    "Citations",
    "JudgedPair",
    "JudgedRecord",
    "Judgement",
    "Metric",
    "PairJudgement",
    "PairVerdict",
    "judged_only",
    "judged_or_plain",
]

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


class JudgedRecord(Record):
    """A generated record with the judge's verdict."""

    judgement: Judgement


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
    written_by: WrittenBy | None = None
    """The job and configuration (digest) that wrote the verdict, with both sides' in ``inputs``
    (:class:`~aidsafe.records.WrittenBy`); None in verdicts that predate it."""


def judged_or_plain(data: dict[str, Any]) -> type[Record]:
    """Read a line as a :class:`JudgedRecord` when it has a ``judgement``, else as a plain :class:`Record`
    (a :data:`~aidsafe.outputs.LineModel` for :func:`~aidsafe.outputs.read_records`)."""
    return JudgedRecord if "judgement" in data else Record


def judged_only(data: dict[str, Any]) -> type[JudgedRecord]:
    """Read a line as a :class:`JudgedRecord`; a plain record is refused."""
    if "judgement" not in data:
        raise ValueError("no 'judgement'; run aidsafe judge first")
    return JudgedRecord
