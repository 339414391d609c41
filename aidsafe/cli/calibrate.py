"""``aidsafe calibrate``: agreement of the judge with human labels (exact, within-1, Cohen's
kappa, quadratic-weighted kappa), per metric and overall. See :mod:`aidsafe.judge.calibration`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InputError
from ..judge.calibration import calibrate
from ..judge.schema import judged_only
from ..outputs import atomic_write_text, read_records
from ._options import env_option

HELP = "measure the judge's agreement with human labels (CSV id,metric,score): exact, within-1, kappa, weighted kappa"
HEADER = ["metric", "n", "unscored", "missing", "exact", "within-1", "kappa", "weighted kappa"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help=HELP, description=HELP)
    p.add_argument("judged", metavar="JUDGED", help="a JSONL file written by aidsafe judge")
    env_option(p, "--labels", metavar="CSV", help="human labels: a CSV with the header id,metric,score (required)", env="AIDSAFE_CALIBRATE_LABELS")
    env_option(p, "--json", metavar="OUT", help="also write the results as JSON to this file", env="AIDSAFE_CALIBRATE_JSON")
    p.set_defaults(func=run)


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _row(name: str, summary: dict[str, Any]) -> list[str]:
    return [
        name,
        str(summary["n"]),
        str(summary["unscored"]),
        str(summary["missing"]),
        _rate(summary["exact"]),
        _rate(summary["within_1"]),
        _rate(summary["kappa"]),
        _rate(summary["weighted_kappa"]),
    ]


def format_table(result: dict[str, Any]) -> str:
    """A markdown table: one row per labelled metric, then ``overall``."""
    rows = [_row(metric, summary) for metric, summary in result["metrics"].items()]
    rows.append(_row("overall", result["overall"]))
    lines = ["| " + " | ".join(HEADER) + " |", "| " + " | ".join(["---"] * len(HEADER)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if not args.labels:
        raise InputError("--labels is required (or set AIDSAFE_CALIBRATE_LABELS)")
    records = list(read_records(args.judged, judged_only, what="a judged record"))
    result = calibrate(records, args.labels)
    sys.stdout.write(format_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
