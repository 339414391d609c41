"""``aidsafe export``: write records in other layouts - the released AIDSAFE dataset's CSV columns,
or training sets in TRL's formats (SFT from a generation output, the SFT_OG baseline from a prompts
file with its original responses, DPO from a judged pairs output)."""

from __future__ import annotations

import argparse
import csv
import sys

from ..aidsafe_csv import COLUMNS, to_row
from ..outputs import atomic_text, read_records
from ..records import Record, training_thoughts
from ..train.datasets import ExportCounts, export_dpo, export_sft, export_sft_original
from ._options import env_option

HELP = (
    "export records: the released AIDSAFE dataset's CSV columns (aidsafe-csv), or a training set in TRL's "
    "conversational formats with a dataset card (sft from a generation output, or with --responses original from a prompts "
    "file's own responses: the SFT_OG baseline; dpo from a pairs output graded by aidsafe judge)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP)
    p.add_argument("records", help="a JSONL file written by aidsafe generate (aidsafe-csv, sft) or by aidsafe pairs and then aidsafe judge "
                                   "(dpo); judged files too; with --responses original, a prompts file with a response field")
    env_option(p, "--format", choices=["aidsafe-csv", "sft", "dpo"], default="aidsafe-csv", help="output layout", env="AIDSAFE_EXPORT_FORMAT")
    env_option(p, "-o", "--output", help="output file (aidsafe-csv) or folder (sft, dpo: train.jsonl and README.md); required", env="AIDSAFE_EXPORT_OUTPUT")
    env_option(p, "--cot", choices=["think", "reasoning", "none"],
               help="sft/dpo: where the chain of thought goes: a <think> block before the response (the default), the assistant "
                    "message's reasoning field, or nowhere")
    env_option(p, "--responses", choices=["generated", "original"], default="generated",
               help="sft: generated (the records' chains of thought and responses) or original: the input is a prompts file (JSONL, "
                    "CSV, ... as aidsafe generate reads it, not an aidsafe output) whose rows carry their original response, written "
                    "without a CoT - the paper's SFT_OG baseline; every row is taken, where sft takes only the ok records of a "
                    "generation output: to compare the two, give it the prompts of those records")
    env_option(p, "--response-field", default="response", help="sft --responses original: the field holding each prompt's original response")
    env_option(p, "--prompt-field", default="prompt", help="sft --responses original: the prompt field of the prompts file")
    env_option(p, "--id-field", default="id", help="sft --responses original: the id field of the prompts file (default ids: the row numbers)")
    env_option(p, "--reasoning-field", default="reasoning_content", help="sft/dpo with --cot reasoning: the message key the chat template reads")
    env_option(p, "--mix", help="sft: a JSONL file of general examples ('messages', or prompt/response fields) to mix in")
    env_option(p, "--mix-ratio", type=float, default=1.0, help="sft: general examples per safety example (the paper: 1.0)")
    env_option(p, "--mix-prompt-field", default="prompt", help="sft: the prompt field of --mix lines without 'messages'")
    env_option(p, "--mix-response-field", default="response", help="sft: the answer field of --mix lines without 'messages'")
    env_option(p, "--include-flagged", action="store_true", help="dpo: keep pairs flagged by aidsafe pairs or aidsafe judge (chosen side unsafe, "
                                                                   "rejected side not worse; a side the judge could not score "
                                                                   "needs --unjudged too); the card lists them by flag")
    env_option(p, "--unjudged", action="store_true", help="dpo: export pairs without the judge's score on both sides - never graded by "
                                                           "aidsafe judge, or whose judge call failed (refused otherwise, with "
                                                           "--include-flagged too); the dataset card says they were not judged")
    env_option(p, "--license", default="other", help="sft/dpo: the licence field of the dataset card")
    env_option(p, "--name", help="sft/dpo: the dataset card's title (default: the folder's name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output:
        print("aidsafe export: -o/--output is required", file=sys.stderr)
        return 2
    if args.responses == "original" and args.format != "sft":
        print("aidsafe export: --responses original is for --format sft (the SFT_OG baseline)", file=sys.stderr)
        return 2
    if args.unjudged and args.format != "dpo":
        print("aidsafe export: --unjudged is for --format dpo", file=sys.stderr)
        return 2
    if args.format == "sft" and args.responses == "original":
        if args.cot not in (None, "none"):
            print(f"aidsafe export: --responses original has no chain of thought to place: leave out --cot {args.cot}", file=sys.stderr)
            return 2
        counts = export_sft_original(
            args.records, args.output, response_field=args.response_field, prompt_field=args.prompt_field, id_field=args.id_field,
            mix=args.mix, mix_ratio=args.mix_ratio, mix_prompt_field=args.mix_prompt_field, mix_response_field=args.mix_response_field,
            license=args.license, name=args.name,
        )
        return _report(counts, args.output, "the SFT_OG baseline: original responses, no chain of thought")
    cot = args.cot or "think"
    if args.format == "sft":
        counts = export_sft(
            args.records, args.output, cot=cot, reasoning_field=args.reasoning_field, mix=args.mix,
            mix_ratio=args.mix_ratio, mix_prompt_field=args.mix_prompt_field, mix_response_field=args.mix_response_field,
            license=args.license, name=args.name,
        )
        return _report(counts, args.output)
    if args.format == "dpo":
        if args.mix:
            print("aidsafe export: --mix is for --format sft", file=sys.stderr)
            return 2
        counts = export_dpo(
            args.records, args.output, cot=cot, reasoning_field=args.reasoning_field,
            include_flagged=args.include_flagged, unjudged=args.unjudged, license=args.license, name=args.name,
        )
        notes = []
        if counts.included_flags:
            notes.append("included although flagged (--include-flagged): "
                         + ", ".join(f"{flag} {n}" for flag, n in counts.included_flags.most_common()))
        if counts.unjudged:
            notes.append(f"{counts.unjudged} of the pairs without the judge's scores on both sides (--unjudged)")
        return _report(counts, args.output, "; ".join(notes))
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


def _report(counts: ExportCounts, folder: str, note: str = "") -> int:
    extra = f" ({counts.safety} safety, {counts.general} general)" if counts.general else ""
    left = "; left out: " + ", ".join(f"{reason} {n}" for reason, n in counts.left_out.items()) if counts.left_out else ""
    if counts.superseded_dropped:
        left += f"; left out {counts.superseded_dropped} superseded thoughts"
    if note:
        left += f"; {note}"
    print(f"wrote {counts.rows} rows{extra} to {folder}/train.jsonl and a dataset card {folder}/README.md{left}", file=sys.stderr)
    return 0
