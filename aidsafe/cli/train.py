"""``aidsafe train sft|dpo CONFIG.yaml``: LoRA / QLoRA training on TRL (extra ``[train]``)."""

from __future__ import annotations

import argparse
import sys

HELP = (
    "train a LoRA adapter on an exported set: sft (trl.SFTTrainer on aidsafe export --format sft) or dpo "
    "(trl.DPOTrainer on aidsafe export --format dpo); 4-bit QLoRA when CUDA is present; needs the [train] extra"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP)
    p.add_argument("method", choices=["sft", "dpo"], help="the trainer")
    p.add_argument("config", help="a training config (schema: aidsafe.train/v1); see examples/train/")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir, if any")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.trainer import train

    result = train(args.method, args.config, resume=args.resume)
    s = result.summary
    losses = result.losses
    trend = f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {s['steps']} steps" if losses else f"{s['steps']} steps, no loss logged"
    epochs = s.get("epoch_mean_loss") or []
    if len(epochs) > 1:
        trend += f" (mean per epoch {epochs[0]:.4f} -> {epochs[-1]:.4f} over {len(epochs)} epochs)"
    print(
        f"trained {args.method} on {s['rows']} rows of {s['data']} ({s['base_model']['name']}, {s['quantization']}, {s['device']}): "
        f"{trend} in {s['seconds_train']} s; adapter, tokenizer and train_summary.json in {result.output_dir}",
        file=sys.stderr,
    )
    return 0
