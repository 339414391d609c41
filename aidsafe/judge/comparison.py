"""What ``aidsafe compare`` computes: several outputs of the same prompts side by side, fairly.

- **One prompt set.** Every figure is over the ids that are ``ok`` in every input: an output that
  fails more often (often on the hardest, most harmful prompts) is not scored on an easier subset.
  How many records each input loses to this is reported. An id that names different prompts in
  two inputs is refused, never paired (:mod:`aidsafe.pairing`).
- **Paired differences.** The first input with judged records is the baseline; each other one gets,
  per metric, the mean difference over the ids both scored, a bootstrap interval that resamples the
  pairs together, and the relative gain, as in the paper's Table 1.
- **Graders kept apart.** Pairwise verdicts are grouped by the two outputs and by their grader
  (judge model and rubric); where two graders judged the same pairs, their agreement and Cohen's
  kappa are reported.
- **One judge per table.** Scores from different judges are never averaged or subtracted: every
  judged input must name the same judge model and rubric digest (:mod:`aidsafe.judge.identity`),
  and one file's records one judge. With ``allow_mixed_judges`` the inputs are grouped by judge
  instead, each group with its own scores, baseline and differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from ..pairing import check_inputs
from ..records import Record
from ..summary import deliberation_stats
from .identity import check_same_judge, judge_groups, single_judge
from .schema import JudgedRecord, PairVerdict
from .stats import grader, grader_agreement, metric_table, paired_differences, win_rates

__all__ = ["common_ids", "compare"]


def _judged(records: Sequence[Record]) -> list[JudgedRecord]:
    return [record for record in records if isinstance(record, JudgedRecord)]


def common_ids(loaded: Mapping[str, Sequence[Record]]) -> set[str]:
    """The ids that are ``ok`` in every input."""
    ok_ids = [{record.id for record in records if record.status == "ok"} for records in loaded.values()]
    return set.intersection(*ok_ids) if ok_ids else set()


def compare(
    loaded: Mapping[str, Sequence[Record]],
    verdicts: Sequence[PairVerdict] = (),
    *,
    allow_mixed_judges: bool = False,
    files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The comparison document (JSON-serialisable) of the inputs ``label -> records``.

    Keys: ``common`` (ids ok in every input), ``inputs`` (per label: ``records``, ``ok``,
    ``in_common``, ``dropped``, ``judged``, ``metrics`` (:func:`~aidsafe.judge.stats.metric_table`
    or None) and ``deliberation`` (:func:`~aidsafe.summary.deliberation_stats`), both over the
    common ids), ``baseline`` and ``differences`` (per other label,
    :func:`~aidsafe.judge.stats.paired_differences`), ``pairs`` (win rates per outputs and
    grader) and ``grader_agreement``. Each input also gets ``judge`` (``judge_model``, ``rubric``,
    ``rubric_digest``; None when unjudged), and ``judges`` lists one group per judge: its
    ``inputs``, ``baseline`` and ``differences``.

    Raises :class:`~aidsafe.errors.InputError` when one input's records name several judges, or
    (unless ``allow_mixed_judges``) when the inputs were judged by different judges; the error
    names each input (with its path from ``files``, label -> path) and its judge. With mixed
    judges allowed, the top-level ``baseline`` and ``differences`` are those of a single group
    only (None and empty when there are several): differences are taken within a group. Inputs in
    which one id names different prompts are refused first (:func:`aidsafe.pairing.check_inputs`):
    their records are not outputs of the same prompts.
    """
    check_inputs(loaded)
    judges = {label: single_judge(records, file=(files or {}).get(label, label)) for label, records in loaded.items()}
    if not allow_mixed_judges:
        check_same_judge(judges, files)
    common = common_ids(loaded)
    kept = {label: [record for record in records if record.id in common] for label, records in loaded.items()}
    judged = {label: _judged(records) for label, records in kept.items()}
    inputs: dict[str, dict[str, Any]] = {}
    for label, records in loaded.items():
        inputs[label] = {
            "records": len(records),
            "ok": sum(record.status == "ok" for record in records),
            "in_common": len(kept[label]),
            "dropped": len(records) - len(kept[label]),
            "judged": len(judged[label]),
            "metrics": metric_table(judged[label]) if judged[label] else None,
            "deliberation": deliberation_stats(kept[label]),
            "judge": judge.as_dict() if (judge := judges[label]) is not None else None,
        }
    by_judge: list[dict[str, Any]] = []
    for judge, labels in judge_groups(judges).items():
        scored = [label for label in labels if judged[label]]
        by_judge.append({
            **judge.as_dict(),
            "inputs": labels,
            "baseline": scored[0] if scored else None,
            "differences": {label: paired_differences(judged[scored[0]], judged[label]) for label in scored[1:]},
        })
    single = by_judge[0] if len(by_judge) == 1 else None
    baseline = single["baseline"] if single else None
    differences = single["differences"] if single else {}
    groups: dict[tuple[str, str, str], list[PairVerdict]] = {}
    for verdict in verdicts:
        groups.setdefault((verdict.a, verdict.b, grader(verdict)), []).append(verdict)
    pairs = [{"a": a, "b": b, "grader": who, **win_rates(group)} for (a, b, who), group in groups.items()]
    agreement = []
    for (a1, b1, g1), (a2, b2, g2) in combinations(groups, 2):
        if (a1, b1) == (a2, b2):
            agreement.append({"a": a1, "b": b1, "grader_1": g1, "grader_2": g2, **grader_agreement(groups[(a1, b1, g1)], groups[(a2, b2, g2)])})
    return {
        "common": len(common),
        "inputs": inputs,
        "baseline": baseline,
        "differences": differences,
        "judges": by_judge,
        "pairs": pairs,
        "grader_agreement": agreement,
    }
