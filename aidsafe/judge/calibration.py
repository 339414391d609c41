"""Agreement between the judge and human labels: exact and within-1 agreement, Cohen's kappa
and quadratic-weighted kappa, per metric and overall (numpy only).

The labels file is a CSV with a header and the columns ``id,metric,score`` (other columns are
ignored): the record id, one of :data:`~aidsafe.judge.schema.METRICS`, and a human score 1-5.
A malformed file raises :class:`~aidsafe.errors.InputError` naming ``file:line``.

Notation for the formulas below: ``n`` pairs ``(judge, human)`` over the ``K = 5`` categories
1..5; ``O[i, j]`` is the share of pairs with judge score ``i`` and human score ``j``;
``r_i = sum_j O[i, j]`` and ``c_j = sum_i O[i, j]`` are the marginal shares; ``E[i, j] = r_i c_j``
is the agreement expected by chance from the marginals.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .schema import METRICS, JudgedRecord

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI starts without it
    import numpy as np

__all__ = ["CATEGORIES", "agreement", "calibrate", "cohen_kappa", "read_labels", "weighted_kappa"]

CATEGORIES: tuple[int, ...] = (1, 2, 3, 4, 5)
LABEL_COLUMNS = ("id", "metric", "score")


# --- kappa --------------------------------------------------------------------------


def _confusion(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable], categories: Sequence[Hashable] = CATEGORIES) -> np.ndarray:
    """``O``: the K x K matrix of pair shares (rows ``rater_a``, columns ``rater_b``)."""
    import numpy as np

    if len(rater_a) != len(rater_b):
        raise ValueError(f"raters scored different numbers of items: {len(rater_a)} and {len(rater_b)}")
    index = {category: position for position, category in enumerate(categories)}
    matrix = np.zeros((len(categories), len(categories)))
    for a, b in zip(rater_a, rater_b, strict=True):
        if a not in index or b not in index:
            raise ValueError(f"ratings must be one of {', '.join(map(str, categories))}, got ({a}, {b})")
        matrix[index[a], index[b]] += 1
    return matrix / len(rater_a)


def _kappa(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable], weights: np.ndarray, categories: Sequence[Hashable] = CATEGORIES) -> float | None:
    """``1 - sum(w * O) / sum(w * E)``: Cohen's kappa for the disagreement weights ``w``."""
    import numpy as np

    if not rater_a:
        return None
    observed = _confusion(rater_a, rater_b, categories)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    chance = float((weights * expected).sum())
    if chance == 0.0:
        return None
    return 1.0 - float((weights * observed).sum()) / chance


def cohen_kappa(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable], categories: Sequence[Hashable] = CATEGORIES) -> float | None:
    """Unweighted Cohen's kappa: ``(p_o - p_e) / (1 - p_e)`` with ``p_o = sum_i O[i, i]``
    (observed agreement) and ``p_e = sum_i r_i c_i`` (chance agreement).

    Equivalent to the weighted form with ``w[i, j] = 0`` on the diagonal and 1 elsewhere.
    ``None`` with no pairs, or when ``p_e == 1`` (both raters used one and the same category:
    kappa is undefined there). ``categories`` are the possible ratings (default: scores 1-5; a
    pairwise verdict is one of ``a``, ``b``, ``tie``).
    """
    import numpy as np

    size = len(categories)
    return _kappa(rater_a, rater_b, 1.0 - np.eye(size), categories)


def weighted_kappa(rater_a: Sequence[int], rater_b: Sequence[int]) -> float | None:
    """Quadratic-weighted Cohen's kappa: ``1 - sum_ij w_ij O_ij / sum_ij w_ij E_ij`` with
    ``w_ij = (i - j)^2 / (K - 1)^2`` (a disagreement by 2 points costs 4 times one by 1 point).

    ``None`` with no pairs, or when ``sum w E == 0`` (undefined, as above).
    """
    import numpy as np

    grid = np.arange(len(CATEGORIES), dtype=float)
    weights = (grid[:, None] - grid[None, :]) ** 2 / (len(CATEGORIES) - 1) ** 2
    return _kappa(rater_a, rater_b, weights)


def agreement(judge: Sequence[int], human: Sequence[int]) -> dict[str, Any]:
    """``n``; ``exact`` (share with judge == human); ``within_1`` (share with ``|judge - human| <= 1``);
    ``kappa`` (:func:`cohen_kappa`); ``weighted_kappa`` (:func:`weighted_kappa`). Rates are
    ``None`` without pairs."""
    n = len(judge)
    pairs = list(zip(judge, human, strict=True))
    return {
        "n": n,
        "exact": sum(a == b for a, b in pairs) / n if n else None,
        "within_1": sum(abs(a - b) <= 1 for a, b in pairs) / n if n else None,
        "kappa": cohen_kappa(judge, human),
        "weighted_kappa": weighted_kappa(judge, human),
    }


# --- labels file --------------------------------------------------------------------


def _label_score(raw: str | None, path: Path, line: int) -> int:
    try:
        score = int((raw or "").strip())
    except ValueError:
        raise InputError(f"score must be an integer 1-5, got {raw!r}", file=path, line=line, field="score") from None
    if score not in CATEGORIES:
        raise InputError(f"score must be 1-5, got {score}", file=path, line=line, field="score")
    return score


def _label_row(row: dict[str, str | None], path: Path, line: int) -> tuple[str, str, int]:
    record_id = (row.get("id") or "").strip()
    metric = (row.get("metric") or "").strip()
    if not record_id:
        raise InputError("empty id", file=path, line=line, field="id")
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}", file=path, line=line, field="metric")
    return record_id, metric, _label_score(row.get("score"), path, line)


def read_labels(path: str | os.PathLike[str]) -> dict[tuple[str, str], int]:
    """``(id, metric) -> human score`` from a labels CSV (header required; see the module doc).

    A missing header or column, an unknown metric, a score outside 1-5 or a repeated
    ``(id, metric)`` raises :class:`InputError` with the file and line.
    """
    path = Path(path)
    labels: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [column for column in LABEL_COLUMNS if column not in header]
        if missing:
            raise InputError(f"header must name the columns {','.join(LABEL_COLUMNS)}; missing {', '.join(missing)}", file=path, line=1)
        reader.fieldnames = header
        for row in reader:
            key_id, metric, score = _label_row(row, path, reader.line_num)
            if (key_id, metric) in labels:
                raise InputError(f"id {key_id!r} is labelled twice for {metric}", file=path, line=reader.line_num)
            labels[(key_id, metric)] = score
    return labels


# --- calibrate ----------------------------------------------------------------------


def _pairs(judged: dict[str, JudgedRecord], labels: dict[tuple[str, str], int], metrics: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per metric: judge and human score lists of the scored pairs, and the excluded counts."""
    out: dict[str, dict[str, Any]] = {metric: {"judge": [], "human": [], "unscored": 0, "missing": 0} for metric in metrics}
    for (record_id, metric), human in labels.items():
        bucket = out[metric]
        record = judged.get(record_id)
        if record is None:
            bucket["missing"] += 1
            continue
        score = record.judgement.scores.get(metric)
        if score is None:
            bucket["unscored"] += 1
            continue
        if score not in CATEGORIES:
            raise InputError(f"judged record {record_id!r}: {metric} score {score} is outside 1-5")
        bucket["judge"].append(score)
        bucket["human"].append(human)
    return out


def _summary(bucket: dict[str, Any]) -> dict[str, Any]:
    return {**agreement(bucket["judge"], bucket["human"]), "unscored": bucket["unscored"], "missing": bucket["missing"]}


def calibrate(judged: Iterable[JudgedRecord], labels_csv: str | os.PathLike[str]) -> dict[str, Any]:
    """Compare the judge's scores with the human labels in ``labels_csv``.

    Returns ``{"labels": n_labels, "metrics": {metric: summary}, "overall": summary}``; the
    metrics are those labelled, in :data:`METRICS` order, and ``overall`` pools all their pairs.
    Each summary holds :func:`agreement`'s ``n``, ``exact``, ``within_1``, ``kappa`` and
    ``weighted_kappa`` over the pairs where both judge and human scored, plus ``unscored``
    (labels whose judge score is ``None``: excluded, never read as a score) and ``missing``
    (labels whose id is not among the judged records).
    """
    records: dict[str, JudgedRecord] = {}
    for record in judged:
        if record.id in records:
            raise InputError(f"judged records hold id {record.id!r} twice")
        records[record.id] = record
    labels = read_labels(labels_csv)
    metrics = [metric for metric in METRICS if any(key[1] == metric for key in labels)]
    buckets = _pairs(records, labels, metrics)
    pooled = {
        "judge": [score for bucket in buckets.values() for score in bucket["judge"]],
        "human": [score for bucket in buckets.values() for score in bucket["human"]],
        "unscored": sum(bucket["unscored"] for bucket in buckets.values()),
        "missing": sum(bucket["missing"] for bucket in buckets.values()),
    }
    return {
        "labels": len(labels),
        "metrics": {metric: _summary(bucket) for metric, bucket in buckets.items()},
        "overall": _summary(pooled),
    }
