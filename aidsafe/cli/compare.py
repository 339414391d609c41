"""``aidsafe compare``: the paper's Table 1 from judged outputs - judge scores with bootstrap
intervals, deliberation statistics and (with ``--pairs``) pairwise win rates.

Each input is a JSONL file of judged records (``aidsafe judge`` output). Plain generated
records (no ``judgement``) are accepted too: such a file gets a column in the deliberation
statistics only. In a file mixing both, the score table uses the judged records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..judge.plots import plot_distributions, require_plots
from ..judge.report import markdown_report
from ..judge.schema import JudgedRecord, PairVerdict, judged_or_plain
from ..judge.stats import metric_table, win_rates
from ..outputs import atomic_write_text, read_records
from ..records import Record
from ..summary import deliberation_stats
from ._options import env_option

HELP = "compare judged outputs: judge scores with bootstrap intervals, deliberation statistics, pairwise win rates (markdown)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=HELP, description=HELP)
    p.add_argument("inputs", nargs="+", metavar="JUDGED", help="JSONL files of judged (or plain generated) records")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="column names, one per input (default: the file names)")
    p.add_argument("--pairs", nargs="+", metavar="PAIRS", help="JSONL files of pairwise verdicts (aidsafe judge's pairwise mode)")
    env_option(p, "--json", metavar="OUT", help="also write the numbers as JSON to this file", env="AIDSAFE_COMPARE_JSON")
    env_option(p, "--plot", metavar="PNG", help="also write the score distributions as a PNG (needs the plots extra)", env="AIDSAFE_COMPARE_PLOT")
    p.set_defaults(func=run)


# --- labels and grouping ------------------------------------------------------------


def input_labels(paths: list[str], labels: list[str] | None) -> list[str]:
    """``--labels`` (one per input, distinct), else the file names (full paths if those clash)."""
    if labels is not None:
        if len(labels) != len(paths):
            raise InputError(f"--labels gives {len(labels)} name(s) for {len(paths)} input(s)")
        chosen = labels
    else:
        names = [Path(path).name for path in paths]
        chosen = names if len(set(names)) == len(names) else list(paths)
    if len(set(chosen)) != len(chosen):
        raise InputError(f"labels must be distinct: {', '.join(chosen)}")
    return chosen


def group_pairs(verdicts: list[PairVerdict]) -> dict[tuple[str, str], list[PairVerdict]]:
    """Verdicts by their ``(a, b)`` labels, in order of first appearance."""
    groups: dict[tuple[str, str], list[PairVerdict]] = {}
    for verdict in verdicts:
        groups.setdefault((verdict.a, verdict.b), []).append(verdict)
    return groups


# --- run ----------------------------------------------------------------------------


def _judged_only(records: list[Record]) -> list[JudgedRecord]:
    return [record for record in records if isinstance(record, JudgedRecord)]


def _json_document(paths: list[str], labels: list[str], loaded: dict[str, list[Record]], tables: dict[str, Any],
                   stats: dict[str, Any], pairs: dict[tuple[str, str], Any]) -> dict[str, Any]:
    inputs = {
        label: {
            "file": path,
            "records": len(loaded[label]),
            "judged": len(_judged_only(loaded[label])),
            "metrics": tables.get(label),
            "deliberation": stats[label],
        }
        for path, label in zip(paths, labels, strict=True)
    }
    return {"inputs": inputs, "pairs": [{"a": a, "b": b, **rates} for (a, b), rates in pairs.items()]}


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require_plots()  # fail before any work when matplotlib is missing
    labels = input_labels(args.inputs, args.labels)
    loaded = {label: list(read_records(path, judged_or_plain, what="an aidsafe record")) for path, label in zip(args.inputs, labels, strict=True)}
    judged = {label: _judged_only(records) for label, records in loaded.items()}
    tables = {label: metric_table(records) for label, records in judged.items() if records}
    if args.plot and not tables:
        raise InputError("--plot needs at least one input with judged records")
    stats = {label: deliberation_stats(records) for label, records in loaded.items()}
    verdicts = [verdict for path in args.pairs or [] for verdict in read_records(path, PairVerdict, what="a pairwise verdict")]
    pairs = {key: win_rates(group) for key, group in group_pairs(verdicts).items()}
    sys.stdout.write(markdown_report(tables, stats, pairs or None))
    if args.json:
        document = _json_document(args.inputs, labels, loaded, tables, stats, pairs)
        atomic_write_text(args.json, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot_distributions({label: records for label, records in judged.items() if records}, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
