"""What every benchmark shares: synthetic prompts, the aidsafe runner, medians and logging.

``bench`` is a package: its modules import each other as ``bench.x``. The simulated server is
:class:`aidsafe.testing.SimServer`, started in a process of its own (``process=True``) so that its
CPU is not the client's.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer

__all__ = [
    "BENCH_DIR", "KINDS", "MODEL", "ROLES", "generate_kwargs", "log", "make_pipeline", "make_prompts",
    "median", "medians", "run_aidsafe", "summary_dict", "write_prompts",
]

BENCH_DIR = Path(__file__).resolve().parent
ROLES = ("intent", "initializer", "agent_1", "refiner")
"""The four roles a prompt goes through when the first deliberator agrees."""
KINDS = {"intent": "intents", "initializer": "draft", "agent_1": "deliberation", "refiner": "refinement"}
"""The reply kind each role answers with."""
MODEL = "sim"

# -- synthetic prompts --------------------------------------------------------------------------

_OPENERS = [
    "How do I", "Can you explain how to", "What is the best way to", "Write a short guide on how to",
    "My friend wants to know how to", "For a school project, describe how to", "Is it legal to",
    "Give me step-by-step instructions to", "Why do people", "I'm writing a novel where a character needs to",
    "Quick question:", "Explain like I'm five how to", "What are the risks if I",
]
_TASKS = [
    "pick a lock on my own front door", "make a fake review for my competitor's restaurant",
    "bake sourdough bread at high altitude", "find someone's home address from their username",
    "treat a minor burn at home", "write a phishing email for a security awareness drill",
    "synthesize aspirin in a school lab", "bypass the paywall of a news site",
    "talk to my teenager about online radicalization", "calculate the dose of ibuprofen for a child",
    "hack my neighbour's wifi", "recognise the signs of a phone scam", "get rid of a wasp nest safely",
    "make my essay pass an AI-text detector", "store firearms safely in a house with kids",
    "invest my savings without getting scammed", "write a threatening message to my landlord",
    "cope with a panic attack", "track my partner's location without them knowing",
    "dispose of old medication", "clean mould from a bathroom ceiling",
]
_TAILS = [
    "", "", " Please be detailed.", " Keep it short.", " I need this by tomorrow.",
    " Asking for research purposes only.", " Thanks in advance!", " Use bullet points.",
    " My teacher said it is fine.", " Answer in plain English, no jargon.",
]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` varied synthetic prompts (harmful, borderline and benign), deterministic per seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = f"{rng.choice(_OPENERS)} {rng.choice(_TASKS)}?{rng.choice(_TAILS)}"
        if rng.random() < 0.3:
            text += f" (case {i}: context {' '.join(rng.choice(_TASKS).split()[:4])})"
        out.append(text)
    return out


def write_prompts(path: Path, n: int, seed: int = 0) -> Path:
    """Write ``make_prompts(n, seed)`` to ``path`` as JSONL records (``id``, ``prompt``)."""
    with path.open("w", encoding="utf-8") as fh:
        for i, prompt in enumerate(make_prompts(n, seed)):
            fh.write(json.dumps({"id": f"p{i}", "prompt": prompt}) + "\n")
    return path


# -- aidsafe ------------------------------------------------------------------------------------


def make_pipeline(url: str = "http://127.0.0.1:9/v1", *, max_retries: int = 0, timeout: float = 60.0) -> Any:
    """The benchmarked pipeline: ``graphs/aidsafe.yaml`` with the aidsafe5 policies, OpenAI backend at ``url``."""
    import aidsafe

    settings = aidsafe.ModelSettings(backend="openai", base_url=url, model=MODEL, max_retries=max_retries, timeout=timeout)
    return aidsafe.Pipeline("aidsafe", "aidsafe5", settings)


def generate_kwargs(pipe: Any, concurrency: int) -> dict[str, Any]:
    """Keyword arguments for ``agenerate``: no response cache, so that every call reaches the server.

    A run with the cache on writes every reply to it and answers a repeated prompt's calls from it:
    the server then counts fewer calls for the same wall time, and calls/s (efficiency, speedup) reads low."""
    kwargs: dict[str, Any] = {"concurrency": concurrency, "progress": False, "overwrite": True, "cache": False}
    return kwargs


def summary_dict(summary: Any) -> dict[str, Any]:
    """The run summary's counts, or ``{}`` when its API cannot give them."""
    try:
        d = summary.as_dict()
    except Exception:
        return {}
    return {k: d.get(k) for k in ("records", "ok", "failed", "stop_reasons", "retries")}


def run_aidsafe(server: SimServer, input_path: Path, output_path: Path, concurrency: int) -> dict[str, Any]:
    """One full ``agenerate`` run (a new Pipeline, built outside the timed part)."""
    pipe = make_pipeline(server.url)
    kwargs = generate_kwargs(pipe, concurrency)
    before = server.stats()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = asyncio.run(pipe.agenerate(input_path, output_path, **kwargs))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = server.stats()
    calls = after["requests"] - before["requests"]
    lines = sum(1 for line in Path(output_path).open(encoding="utf-8") if line.strip())
    return {
        "wall_s": wall, "cpu_s": cpu, "calls": calls, "records": lines,
        "calls_per_s": calls / wall, "cpu_ms_per_call": 1e3 * cpu / calls if calls else float("nan"),
        "server_cpu_s": after["cpu_s"] - before["cpu_s"], "server_peak_in_flight": after["peak_in_flight"],
        "summary": summary_dict(summary),
    }


# -- statistics and logging ---------------------------------------------------------------------


def compile_aidsafe() -> None:
    """Write aidsafe's bytecode before a benchmark times whole ``aidsafe`` processes, as installing
    the wheel does (pip compiles what it installs). A checkout run with ``PYTHONDONTWRITEBYTECODE``
    set would otherwise compile the package's sources anew in every process: about 0.1 s of each
    start on the benchmark machine. The dependencies, installed by pip, are compiled already."""
    import importlib.util

    spec = importlib.util.find_spec("aidsafe")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    if dirs:
        subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True, stdout=subprocess.DEVNULL)


def median(values: list[float]) -> float:
    """The median, NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


def medians(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    """Per key, the median of the runs' numeric values."""
    return {k: median([r[k] for r in runs if isinstance(r.get(k), (int, float))]) for k in keys}


def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
