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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import InputError
from ..judge.schema import JudgedRecord, PairVerdict
from ..judge.stats import deliberation_stats, markdown_report, metric_table, plot_distributions, require_plots, win_rates
from ..outputs import atomic_write_text
from ..records import Record
from ._options import env_option

HELP = "compare judged outputs: judge scores with bootstrap intervals, deliberation statistics, pairwise win rates (markdown)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("compare", help=HELP, description=HELP)
    p.add_argument("inputs", nargs="+", metavar="JUDGED", help="JSONL files of judged (or plain generated) records")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="column names, one per input (default: the file names)")
    p.add_argument("--pairs", nargs="+", metavar="PAIRS", help="JSONL files of pairwise verdicts (aidsafe judge's pairwise mode)")
    env_option(p, "--json", metavar="OUT", help="also write the numbers as JSON to this file", env="AIDSAFE_COMPARE_JSON")
    env_option(p, "--plot", metavar="PNG", help="also write the score distributions as a PNG (needs the plots extra)", env="AIDSAFE_COMPARE_PLOT")
    p.set_defaults(func=run)


# --- reading ------------------------------------------------------------------------


def _first_problem(exc: ValidationError) -> str:
    """``field.path: message`` of the first validation error."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def parse_record(line: str, path: str | Path, number: int, *, require_judgement: bool) -> Record:
    """One JSONL line as a :class:`JudgedRecord` (it has ``judgement``) or a :class:`Record`;
    problems raise :class:`InputError` naming ``path:number``."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg}", file=path, line=number) from None
    if not isinstance(data, dict):
        raise InputError("not a JSON object", file=path, line=number)
    judged = "judgement" in data
    if require_judgement and not judged:
        raise InputError("not a judged record (no 'judgement'; run aidsafe judge first)", file=path, line=number)
    model = JudgedRecord if judged else Record
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        kind = "judged record" if judged else "aidsafe record"
        raise InputError(f"not a valid {kind}: {_first_problem(exc)}", file=path, line=number) from None


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of a text file."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


def read_judged(path: str | Path, *, require_judgement: bool = False) -> list[Record]:
    """Validate every line as a :class:`JudgedRecord` (when it has ``judgement``) or a plain
    :class:`Record`; a bad line raises :class:`InputError` naming ``file:line``. With
    ``require_judgement`` a plain record is an error too."""
    return [parse_record(line, path, number, require_judgement=require_judgement) for number, line in iter_lines(path)]


def read_pairs(path: str | Path) -> list[PairVerdict]:
    """Validate every line as a :class:`PairVerdict` (errors name ``file:line``)."""
    verdicts = []
    for number, line in iter_lines(path):
        try:
            verdicts.append(PairVerdict.model_validate_json(line))
        except ValidationError as exc:
            raise InputError(f"not a pairwise verdict: {_first_problem(exc)}", file=path, line=number) from None
    return verdicts


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
        for path, label in zip(paths, labels)
    }
    return {"inputs": inputs, "pairs": [{"a": a, "b": b, **rates} for (a, b), rates in pairs.items()]}


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require_plots()  # fail before any work when matplotlib is missing
    labels = input_labels(args.inputs, args.labels)
    loaded = {label: read_judged(path) for path, label in zip(args.inputs, labels)}
    judged = {label: _judged_only(records) for label, records in loaded.items()}
    tables = {label: metric_table(records) for label, records in judged.items() if records}
    if args.plot and not tables:
        raise InputError("--plot needs at least one input with judged records")
    stats = {label: deliberation_stats(records) for label, records in loaded.items()}
    verdicts = [verdict for path in args.pairs or [] for verdict in read_pairs(path)]
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
