"""``aidsafe train sft|dpo CONFIG.yaml``: LoRA / QLoRA training on TRL (extra ``[train]``);
``aidsafe train merge OUTPUT_DIR``: fold a run's adapter into its base model, a full model folder."""

from __future__ import annotations

import argparse
import sys

from ._options import env_option

HELP = (
    "train a LoRA adapter on an exported set: sft (trl.SFTTrainer on aidsafe export --format sft) or dpo "
    "(trl.DPOTrainer on aidsafe export --format dpo); 4-bit QLoRA when CUDA is present; merge: fold a run's adapter into "
    "its base model (the base of the next stage: SFT -> merge -> DPO); needs the [train] extra"
)
MERGE_HELP = (
    "merge the LoRA adapter of an aidsafe train sft|dpo run into its base model (peft merge_and_unload) and save a full "
    "transformers model (safetensors), the tokenizer and aidsafe_merge.json (provenance); a QLoRA run is merged onto its "
    "base loaded in full precision; refused when the recorded base changed since training, when the base already holds the "
    "adapter, or when the output is the base or a model it was built from"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP)
    # before the method too, as it was before `train merge`: `aidsafe train --resume sft CONFIG`
    # (its own dest: a subcommand's default would overwrite the value parsed here)
    p.add_argument("--resume", dest="resume_first", action="store_true", help="sft/dpo: the same as --resume after the method")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method, text in (("sft", "supervised fine-tuning: trl.SFTTrainer on aidsafe export --format sft"),
                         ("dpo", "preference training: trl.DPOTrainer on aidsafe export --format dpo")):
        t = methods.add_parser(method, help=text, description=text)
        t.add_argument("config", help="a training config (schema: aidsafe.train/v1); see examples/train/")
        t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir, if any")
        t.set_defaults(func=run)
    m = methods.add_parser("merge", help=MERGE_HELP, description=MERGE_HELP)
    m.add_argument("output_dir", help="the output_dir of an aidsafe train sft|dpo run (adapter, tokenizer, train_summary.json)")
    env_option(m, "-o", "--output", help="where the merged model goes (default: OUTPUT_DIR/merged)", env="AIDSAFE_TRAIN_MERGE_OUTPUT")
    env_option(m, "--base", help="the base model to merge onto instead of the one the run recorded: embedded, a model folder, a .gguf "
                                 "file or a Hugging Face id (a full-precision copy of a base stored quantized, or a base that moved); named "
                                 "deliberately, so the check that the recorded base is unchanged since training is skipped",
               env="AIDSAFE_TRAIN_MERGE_BASE")
    m.set_defaults(func=run_merge)


def run(args: argparse.Namespace) -> int:
    from ..train.trainer import train

    result = train(args.method, args.config, resume=args.resume or args.resume_first)
    s = result.summary
    losses = result.losses
    trend = f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {s['steps']} steps" if losses else f"{s['steps']} steps, no loss logged"
    epochs = s.get("epoch_mean_loss") or []
    if len(epochs) > 1:
        trend += f" (mean per epoch {epochs[0]:.4f} -> {epochs[-1]:.4f} over {len(epochs)} epochs)"
    merged = f"; merged model in {s['merged_dir']}" if s.get("merged_dir") else ""
    print(
        f"trained {args.method} on {s['rows']} rows of {s['data']} ({s['base_model']['name']}, {s['quantization']}, {s['device']}): "
        f"{trend} in {s['seconds_train']} s; adapter, tokenizer and train_summary.json in {result.output_dir}{merged}",
        file=sys.stderr,
    )
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..train.merge import PROVENANCE_FILE, merge_adapter

    if args.resume_first:
        print("aidsafe train: --resume is for sft and dpo (continuing a training run), not merge", file=sys.stderr)
        return 2
    result = merge_adapter(args.output_dir, args.output, base=args.base)
    p = result.provenance
    note = " (the adapter was trained on the base in 4 bits; merged onto it in full precision)" if p["trained_quantization"] == "4bit" else ""
    base = p["base_model"]["name"] if p["base_model"]["gguf_file"] else p["base_model"]["source"]
    print(f"merged the {p['method']} adapter of {p['adapter_dir']} into {base}{note}: "
          f"a {p['merged_dtype']} model, its tokenizer and {PROVENANCE_FILE} in {result.merged_dir}", file=sys.stderr)
    return 0
