"""``aidsafe export``: write records in other layouts (the released AIDSAFE dataset's CSV columns)."""

from __future__ import annotations

import argparse
import csv
import sys

from ..aidsafe_csv import COLUMNS, to_row
from ..outputs import atomic_text, read_records
from ..records import Record
from ._options import env_option

HELP = (
    "export records to the columns of the released AIDSAFE dataset (prompt, refined_thoughts, response, "
    "deliberation_log: intents, seed, every turn, the refiner's removals)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP)
    p.add_argument("records", help="a JSONL file written by aidsafe generate")
    env_option(p, "--format", choices=["aidsafe-csv"], default="aidsafe-csv", help="output layout", env="AIDSAFE_EXPORT_FORMAT")
    env_option(p, "-o", "--output", help="output file (required)", env="AIDSAFE_EXPORT_OUTPUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output:
        print("aidsafe export: -o/--output is required", file=sys.stderr)
        return 2
    written = skipped = 0
    with atomic_text(args.output, newline="") as fh:  # a bad line leaves no partial file behind
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for record in read_records(args.records, Record):
            if record.status != "ok":
                skipped += 1
                continue
            writer.writerow(to_row(record))
            written += 1
    print(f"wrote {written} rows to {args.output}; skipped {skipped} failed records", file=sys.stderr)
    return 0
