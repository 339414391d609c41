"""``aidsafe export``: write records in other layouts - the released AIDSAFE dataset's CSV columns,
or training sets in TRL's formats (SFT from a generation output, DPO from a pairs output)."""

from __future__ import annotations

import argparse
import csv
import sys

from ..aidsafe_csv import COLUMNS, to_row
from ..outputs import atomic_text, read_records
from ..records import Record, training_thoughts
from ..train.datasets import ExportCounts, export_dpo, export_sft
from ._options import env_option

HELP = (
    "export records: the released AIDSAFE dataset's CSV columns (aidsafe-csv), or a training set in TRL's "
    "conversational formats with a dataset card (sft from a generation output, dpo from an aidsafe pairs output)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP)
    p.add_argument("records", help="a JSONL file written by aidsafe generate (aidsafe-csv, sft) or aidsafe pairs (dpo); judged files too")
    env_option(p, "--format", choices=["aidsafe-csv", "sft", "dpo"], default="aidsafe-csv", help="output layout", env="AIDSAFE_EXPORT_FORMAT")
    env_option(p, "-o", "--output", help="output file (aidsafe-csv) or folder (sft, dpo: train.jsonl and README.md); required", env="AIDSAFE_EXPORT_OUTPUT")
    env_option(p, "--cot", choices=["think", "reasoning", "none"], default="think",
               help="sft/dpo: where the chain of thought goes: a <think> block before the response, the assistant message's reasoning field, or nowhere")
    env_option(p, "--reasoning-field", default="reasoning_content", help="sft/dpo with --cot reasoning: the message key the chat template reads")
    env_option(p, "--mix", help="sft: a JSONL file of general examples ('messages', or prompt/response fields) to mix in")
    env_option(p, "--mix-ratio", type=float, default=1.0, help="sft: general examples per safety example (the paper: 1.0)")
    env_option(p, "--mix-prompt-field", default="prompt", help="sft: the prompt field of --mix lines without 'messages'")
    env_option(p, "--mix-response-field", default="response", help="sft: the answer field of --mix lines without 'messages'")
    env_option(p, "--include-flagged", action="store_true", help="dpo: keep pairs flagged by aidsafe judge (rejected side not worse, unjudged)")
    env_option(p, "--license", default="other", help="sft/dpo: the licence field of the dataset card")
    env_option(p, "--name", help="sft/dpo: the dataset card's title (default: the folder's name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output:
        print("aidsafe export: -o/--output is required", file=sys.stderr)
        return 2
    if args.format == "sft":
        counts = export_sft(
            args.records, args.output, cot=args.cot, reasoning_field=args.reasoning_field, mix=args.mix,
            mix_ratio=args.mix_ratio, mix_prompt_field=args.mix_prompt_field, mix_response_field=args.mix_response_field,
            license=args.license, name=args.name,
        )
        return _report(counts, args.output)
    if args.format == "dpo":
        if args.mix:
            print("aidsafe export: --mix is for --format sft", file=sys.stderr)
            return 2
        counts = export_dpo(
            args.records, args.output, cot=args.cot, reasoning_field=args.reasoning_field,
            include_flagged=args.include_flagged, license=args.license, name=args.name,
        )
        return _report(counts, args.output)
    written = skipped = dropped = 0
    with atomic_text(args.output, newline="") as fh:  # a bad line leaves no partial file behind
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for record in read_records(args.records, Record):
            if record.status != "ok":
                skipped += 1
                continue
            writer.writerow(to_row(record))
            written += 1
            dropped += len(record.thoughts) - len(training_thoughts(record.thoughts))
    superseded = f"; left out {dropped} superseded thoughts" if dropped else ""
    print(f"wrote {written} rows to {args.output}; skipped {skipped} failed records{superseded}", file=sys.stderr)
    return 0


def _report(counts: ExportCounts, folder: str) -> int:
    extra = f" ({counts.safety} safety, {counts.general} general)" if counts.general else ""
    left = "; left out: " + ", ".join(f"{reason} {n}" for reason, n in counts.left_out.items()) if counts.left_out else ""
    if counts.superseded_dropped:
        left += f"; left out {counts.superseded_dropped} superseded thoughts"
    print(f"wrote {counts.rows} rows{extra} to {folder}/train.jsonl and a dataset card {folder}/README.md{left}", file=sys.stderr)
    return 0
