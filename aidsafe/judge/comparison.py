"""What ``aidsafe compare`` computes: several outputs of the same prompts side by side, fairly.

- **One prompt set.** Every figure is over the ids that are ``ok`` in every input: an output that
  fails more often (often on the hardest, most harmful prompts) is not scored on an easier subset.
  How many records each input loses to this is reported.
- **Paired differences.** The first input with judged records is the baseline; each other one gets,
  per metric, the mean difference over the ids both scored, a bootstrap interval that resamples the
  pairs together, and the relative gain, as in the paper's Table 1.
- **Graders kept apart.** Pairwise verdicts are grouped by the two outputs and by their grader
  (judge model and rubric); where two graders judged the same pairs, their agreement and Cohen's
  kappa are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from ..records import Record
from ..summary import deliberation_stats
from .schema import JudgedRecord, PairVerdict
from .stats import grader, grader_agreement, metric_table, paired_differences, win_rates

__all__ = ["common_ids", "compare"]


def _judged(records: Sequence[Record]) -> list[JudgedRecord]:
    return [record for record in records if isinstance(record, JudgedRecord)]


def common_ids(loaded: Mapping[str, Sequence[Record]]) -> set[str]:
    """The ids that are ``ok`` in every input."""
    ok_ids = [{record.id for record in records if record.status == "ok"} for records in loaded.values()]
    return set.intersection(*ok_ids) if ok_ids else set()


def compare(loaded: Mapping[str, Sequence[Record]], verdicts: Sequence[PairVerdict] = ()) -> dict[str, Any]:
    """The comparison document (JSON-serialisable) of the inputs ``label -> records``.

    Keys: ``common`` (ids ok in every input), ``inputs`` (per label: ``records``, ``ok``,
    ``in_common``, ``dropped``, ``judged``, ``metrics`` (:func:`~aidsafe.judge.stats.metric_table`
    or None) and ``deliberation`` (:func:`~aidsafe.summary.deliberation_stats`), both over the
    common ids), ``baseline`` and ``differences`` (per other label,
    :func:`~aidsafe.judge.stats.paired_differences`), ``pairs`` (win rates per outputs and
    grader) and ``grader_agreement``.
    """
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
        }
    scored = [label for label in loaded if judged[label]]
    baseline = scored[0] if scored else None
    differences = {label: paired_differences(judged[scored[0]], judged[label]) for label in scored[1:]}
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
        "pairs": pairs,
        "grader_agreement": agreement,
    }
