"""``aidsafe import``: read the released AIDSAFE dataset's CSV into records, to judge and compare it."""

from __future__ import annotations

import argparse
import sys

from ..aidsafe_csv import read_released
from ..errors import InputError
from ..outputs import atomic_text
from ..policies import load_policy_set
from ._options import env_option

HELP = "read a CSV in the released AIDSAFE layout (prompt, refined_thoughts, response, deliberation_log) into JSONL records"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help=HELP, description=HELP)
    p.add_argument("released", metavar="CSV", help="a CSV file of the released dataset (e.g. a split of Beavertails_CoT)")
    env_option(p, "-o", "--output", help="JSONL records (required)", env="AIDSAFE_IMPORT_OUTPUT")
    env_option(p, "--policies", default="aidsafe5", help="the policy pack the records are to be judged against", env="AIDSAFE_IMPORT_POLICIES")
    env_option(p, "--graph-name", default="aidsafe-released", help="the name written as each record's graph", env="AIDSAFE_IMPORT_GRAPH_NAME")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output:
        raise InputError("-o/--output is required (or set AIDSAFE_IMPORT_OUTPUT)")
    count = 0
    with atomic_text(args.output) as out:  # a bad row leaves no partial file behind
        for record in read_released(args.released, load_policy_set(args.policies), graph=args.graph_name):
            out.write(record.model_dump_json() + "\n")
            count += 1
    print(f"imported {count} records from {args.released} into {args.output}", file=sys.stderr)
    return 0
