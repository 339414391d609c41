"""Who judged a file: the judge model and the rubric digest its records name, so that
``aidsafe compare`` never averages or subtracts scores given by different judges.

A judged record names its judge in ``judgement.judge_model`` (``backend:model``) and its rubric
in ``judgement.rubric`` (``file name@digest``; the digest is the first 12 hex digits of the
SHA-256 of the rubric template's source, the text that states the metrics and their 1-5 scale).
A pairwise verdict names them in ``judge_model`` and ``rubric``. Two rubrics with the same digest
are the same rubric whatever their file names. A rubric recorded without a digest (a verdict
written before verdicts named their grader, a record written by hand) reads ``unknown``, which
differs from every known digest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..pairs.judged import JudgedPair, Judgement
from .schema import JudgedRecord, PairVerdict

__all__ = ["UNKNOWN", "JudgeId", "check_same_judge", "judge_groups", "judges_of", "rubric_digest", "single_judge"]

UNKNOWN = "unknown"
"""The judge model or rubric digest of a record that does not name it."""

MIXED_HINT = "pass --allow-mixed-judges to show one table per judge and rubric instead"


def rubric_digest(rubric: str | None) -> str:
    """The digest of a recorded rubric label ``name@digest``; :data:`UNKNOWN` without one."""
    if not rubric or "@" not in rubric:
        return UNKNOWN
    return rubric.rpartition("@")[2].strip() or UNKNOWN


@dataclass(frozen=True)
class JudgeId:
    """A judge: its model and rubric digest (equal when both are; the rubric's file name is shown only)."""

    judge_model: str
    rubric_digest: str
    rubric: str = field(default=UNKNOWN, compare=False)
    """The rubric as recorded (``name@digest``), for display."""

    @classmethod
    def of(cls, judge_model: str | None, rubric: str | None) -> JudgeId:
        return cls(judge_model or UNKNOWN, rubric_digest(rubric), rubric or UNKNOWN)

    def __str__(self) -> str:
        shown = f" ({self.rubric})" if self.rubric not in (UNKNOWN, self.rubric_digest) else ""
        return f"judge model {self.judge_model}, rubric digest {self.rubric_digest}{shown}"

    def as_dict(self) -> dict[str, str]:
        return {"judge_model": self.judge_model, "rubric": self.rubric, "rubric_digest": self.rubric_digest}


def _judgements(item: Any) -> list[Judgement]:
    if isinstance(item, JudgedRecord):
        return [item.judgement]
    if isinstance(item, JudgedPair) and item.judgement is not None:
        return [item.judgement.chosen, *([item.judgement.rejected] if item.judgement.rejected is not None else [])]
    return []


def judges_of(items: Iterable[Any]) -> Counter[JudgeId]:
    """How many judgements each judge gave: judged records, both sides of judged pairs, pairwise
    verdicts; plain records and pairs give none."""
    counts: Counter[JudgeId] = Counter()
    for item in items:
        if isinstance(item, PairVerdict):
            counts[JudgeId.of(item.judge_model, item.rubric)] += 1
        for judgement in _judgements(item):
            counts[JudgeId.of(judgement.judge_model, judgement.rubric)] += 1
    return counts


def single_judge(items: Iterable[Any], *, file: str | None = None) -> JudgeId | None:
    """The one judge of a file's records (None when none is judged); :class:`InputError` naming
    each judge and how many judgements it gave when they differ (a run resumed with another judge,
    files concatenated): never mixed, even with ``--allow-mixed-judges``."""
    counts = judges_of(items)
    if len(counts) <= 1:
        return next(iter(counts), None)
    listed = "\n".join(f"  {count} by {judge}" for judge, count in counts.most_common())
    raise InputError(
        f"its records were judged by {len(counts)} different judges (a judge run resumed with another judge model "
        f"or rubric, or files concatenated); judge it again with one judge:\n{listed}",
        file=file,
    )


def judge_groups(judges: Mapping[str, JudgeId | None]) -> dict[JudgeId, list[str]]:
    """The labels judged by each judge, in input order (labels without a judge left out)."""
    groups: dict[JudgeId, list[str]] = {}
    for label, judge in judges.items():
        if judge is not None:
            groups.setdefault(judge, []).append(label)
    return groups


def check_same_judge(judges: Mapping[str, JudgeId | None], files: Mapping[str, str] | None = None) -> None:
    """:class:`InputError` naming every input with its judge model and rubric digest when the
    judged inputs were not all judged by the same model with the same rubric."""
    if len(judge_groups(judges)) <= 1:
        return
    files = files or {}

    def name(label: str) -> str:
        path = files.get(label)
        return label if path is None or path == label else f"{path} ({label})"

    listed = "\n".join(f"  {name(label)}: {judge}" for label, judge in judges.items() if judge is not None)
    raise InputError(
        "the inputs were judged by different judges (judge model or rubric digest), whose scores are not comparable; "
        f"judge them all with one judge, or {MIXED_HINT}:\n{listed}"
    )
