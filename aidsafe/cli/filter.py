"""``aidsafe filter``: keep the judged records that meet score thresholds.

A record is kept when its ``status`` is ``ok`` and, for every ``--min METRIC=VALUE``, its
score for METRIC is at least VALUE. An **unscored** metric (the judge could not score it)
**fails** its threshold by default - a record is never kept on a score nobody gave;
``--allow-unscored`` lets an unscored metric pass instead. ``--require-scored`` is stricter:
it drops a record with *any* unscored metric, thresholded or not. The kept lines are copied
verbatim to the output, which is written atomically (temp file + ``os.replace``); kept and
dropped counts, with the reasons, go to stderr (a record failing several tests counts under
each reason).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ..errors import InputError
from ..judge.schema import METRICS, JudgedRecord, judged_only
from ..outputs import atomic_write_text, read_record_lines
from ._options import env_option

HELP = "keep the ok judged records whose scores meet --min METRIC=VALUE thresholds (unscored fails by default)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help=HELP, description=HELP)
    p.add_argument("judged", metavar="JUDGED", help="a JSONL file written by aidsafe judge")
    env_option(p, "-o", "--output", help="JSONL file of the kept records (required)", env="AIDSAFE_FILTER_OUTPUT")
    env_option(p, "--min", action="append", metavar="METRIC=VALUE", help=f"keep scores >= VALUE (repeatable); metrics: {', '.join(METRICS)}", env="AIDSAFE_FILTER_MIN")
    unscored = p.add_mutually_exclusive_group()
    env_option(unscored, "--allow-unscored", action="store_true", help="an unscored metric passes its threshold (default: it fails)", env="AIDSAFE_FILTER_ALLOW_UNSCORED")
    env_option(unscored, "--require-scored", action="store_true", help="drop records with any unscored metric, thresholded or not", env="AIDSAFE_FILTER_REQUIRE_SCORED")
    p.set_defaults(func=run)


def parse_thresholds(items: list[str] | None) -> dict[str, float]:
    """``["relevance=4", ...]`` -> ``{"relevance": 4.0}``; unknown metric names, a bad value or a
    metric given twice raise :class:`InputError` (listing the metrics)."""
    thresholds: dict[str, float] = {}
    for item in items or []:
        metric, sep, raw = item.partition("=")
        metric = metric.strip()
        if not sep or not metric:
            raise InputError(f"--min expects METRIC=VALUE, got {item!r}")
        if metric not in METRICS:
            raise InputError(f"--min: unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
        if metric in thresholds:
            raise InputError(f"--min: {metric} given twice")
        try:
            thresholds[metric] = float(raw)
        except ValueError:
            raise InputError(f"--min: {metric} needs a number, got {raw.strip()!r}") from None
    return thresholds


def _value(value: float) -> str:
    return f"{value:g}"


def drop_reasons(record: JudgedRecord, thresholds: dict[str, float], *, allow_unscored: bool, require_scored: bool) -> list[str]:
    """Why ``record`` is dropped (empty when it is kept)."""
    reasons = [] if record.status == "ok" else [f"status {record.status}"]
    scores = record.judgement.scores
    if require_scored and (any(score is None for score in scores.values()) or record.judgement.unscored):
        reasons.append("unscored metric (--require-scored)")
    for metric, minimum in thresholds.items():
        score = scores.get(metric)
        if score is None:
            if not allow_unscored:
                reasons.append(f"{metric} unscored")
        elif score < minimum:
            reasons.append(f"{metric} < {_value(minimum)}")
    return reasons


def run(args: argparse.Namespace) -> int:
    if not args.output:
        raise InputError("-o/--output is required (or set AIDSAFE_FILTER_OUTPUT)")
    if args.allow_unscored and args.require_scored:
        raise InputError("--allow-unscored and --require-scored exclude each other")
    thresholds = parse_thresholds(args.min)
    kept: list[str] = []
    reasons: Counter[str] = Counter()
    total = 0
    for line, record in read_record_lines(args.judged, judged_only, what="a judged record"):
        total += 1
        why = drop_reasons(record, thresholds, allow_unscored=args.allow_unscored, require_scored=args.require_scored)
        reasons.update(why)
        if not why:
            kept.append(line.raw.decode("utf-8").rstrip("\r\n") + "\n")
    atomic_write_text(args.output, "".join(kept))
    print(f"kept {len(kept)}, dropped {total - len(kept)} of {total} records -> {args.output}", file=sys.stderr)
    for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
        print(f"  dropped: {reason}: {count}", file=sys.stderr)
    return 0
