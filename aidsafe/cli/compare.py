"""``aidsafe compare``: the paper's Table 1 from judged outputs, over the ids ok in every input -
judge scores with bootstrap intervals, paired differences from the first input with relative
gains, deliberation statistics, and (with ``--pairs``) pairwise win rates per grader and the
agreement between graders. See :mod:`aidsafe.judge.comparison`.

Each input is a JSONL file of judged records (``aidsafe judge`` output). Plain generated
records (no ``judgement``) are accepted too: such a file gets a column in the deliberation
statistics only. In a file mixing both, the score table uses the judged records.

Scores are compared only between inputs judged by the same judge model with the same rubric
(:mod:`aidsafe.judge.identity`): inputs of different judges are refused, naming each file and
its judge, unless ``--allow-mixed-judges``, which gives each judge its own tables. A file whose
records name several judges is always refused. The tables name their judge.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..judge.comparison import common_ids, compare
from ..judge.identity import single_judge
from ..judge.plots import plot_distributions, require_plots
from ..judge.report import judge_name, markdown_report
from ..judge.schema import JudgedRecord, PairVerdict, judged_or_plain
from ..outputs import atomic_write_text, first_line_is, read_records
from ..pairs.judged import judged_pair_or_plain
from ..pairs.report import pair_rows, pair_stats, pairs_markdown
from ._options import env_option

HELP = (
    "compare judged outputs over the ids ok in every input: scores with bootstrap intervals, paired differences and "
    "relative gains, deliberation statistics, pairwise win rates and grader agreement (markdown)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=HELP, description=HELP)
    p.add_argument("inputs", nargs="+", metavar="JUDGED", help="JSONL files of judged (or plain generated) records, or of (judged) pairs from aidsafe pairs")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="column names, one per input (default: the file names)")
    p.add_argument("--pairs", nargs="+", metavar="PAIRS", help="JSONL files of pairwise verdicts (aidsafe judge's pairwise mode)")
    env_option(p, "--json", metavar="OUT", help="also write the numbers as JSON to this file", env="AIDSAFE_COMPARE_JSON")
    env_option(p, "--plot", metavar="PNG", help="also write the score distributions as a PNG (needs the plots extra)", env="AIDSAFE_COMPARE_PLOT")
    env_option(
        p, "--allow-mixed-judges", action="store_true", env="AIDSAFE_COMPARE_ALLOW_MIXED_JUDGES",
        help="compare inputs judged by different judge models or rubrics as one group per judge (no average or difference "
        "across judges) instead of refusing them",
    )
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


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require_plots()  # fail before any work when matplotlib is missing
    labels = input_labels(args.inputs, args.labels)
    pair_files = {label: path for path, label in zip(args.inputs, labels, strict=True) if first_line_is(path, judged_pair_or_plain)}
    pair_sections = []
    pair_json: dict[str, Any] = {}
    for label, path in pair_files.items():
        pairs = list(read_records(path, judged_pair_or_plain, what="a pair record"))
        judge = single_judge(pairs, file=path)
        stats, rows = pair_stats(pairs), pair_rows(pairs)
        pair_sections.append(pairs_markdown(label, stats, rows, judge=str(judge) if judge else None))
        pair_json[label] = {"file": path, "judge": judge.as_dict() if judge else None, **stats, "rows": rows}
    record_files = [(path, label) for path, label in zip(args.inputs, labels, strict=True) if label not in pair_files]
    if not record_files:
        sys.stdout.write("\n".join(pair_sections))
        if args.json:
            atomic_write_text(args.json, json.dumps({"preference_pairs": pair_json}, indent=2, ensure_ascii=False) + "\n")
        return 0
    loaded = {label: list(read_records(path, judged_or_plain, what="an aidsafe record")) for path, label in record_files}
    verdicts: list[PairVerdict] = []
    for path in args.pairs or []:
        verdict_file = list(read_records(path, PairVerdict, what="a pairwise verdict"))
        single_judge(verdict_file, file=path)  # graders of different files are kept apart, not those of one file
        verdicts += verdict_file
    files = {label: path for path, label in record_files}
    document = compare(loaded, verdicts, allow_mixed_judges=args.allow_mixed_judges, files=files)
    if args.plot and not any(i["judged"] for i in document["inputs"].values()):
        raise InputError("--plot needs at least one input with judged records")
    for path, label in record_files:
        document["inputs"][label]["file"] = path
    if pair_json:
        document["preference_pairs"] = pair_json
    sys.stdout.write("\n".join([markdown_report(document), *pair_sections]))
    if args.json:
        atomic_write_text(args.json, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        common = common_ids(loaded)
        judged = {label: [r for r in records if isinstance(r, JudgedRecord) and r.id in common] for label, records in loaded.items()}
        judges = {label: judge for judge in document["judges"] for label in judge["inputs"]}
        if len(document["judges"]) > 1:  # each bar names its judge
            named = {f"{label} ({judges[label]['judge_model']}, {judges[label]['rubric_digest']})": records for label, records in judged.items() if records}
            plot_distributions(named, args.plot, title="different judges: not comparable across judges")
        else:
            title = f"judged by {judge_name(document['judges'][0])}" if document["judges"] else None
            plot_distributions({label: records for label, records in judged.items() if records}, args.plot, title=title)
        print(f"wrote {args.plot} (over the {len(common)} ids ok in every input)", file=sys.stderr)
    return 0
