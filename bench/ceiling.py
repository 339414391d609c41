"""ceiling: model calls/s through the whole aidsafe graph at zero latency, next to plain AsyncOpenAI.

Both keep ``--concurrency`` prompts in flight (64 by default); no target, the figure is context.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.baselines import rendered_calls, run_baseline
from bench.common import log, make_prompts, medians, run_aidsafe, write_prompts
from bench.report import Row, fmt

__all__ = ["measure", "rows"]


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--ceiling-prompts``, ``--concurrency``, ``--repeats``)."""
    n, c = args.ceiling_prompts, args.concurrency
    prompts = make_prompts(n, seed=2)
    inp = write_prompts(tmp / "ceiling.jsonl", n, seed=2)
    msgs, formats = rendered_calls(prompts)
    runs: dict[str, list[dict[str, Any]]] = {"aidsafe": [], "plain": []}
    with SimServer(latency=0.0, process=True) as server:
        warm = write_prompts(tmp / "warm.jsonl", 16, seed=9)
        run_aidsafe(server, warm, tmp / "warm.out.jsonl", c)
        run_baseline("plain", server, msgs[:16], formats, c)
        for r in range(args.repeats):
            runs["aidsafe"].append(run_aidsafe(server, inp, tmp / "ceiling.out.jsonl", c))
            runs["plain"].append(run_baseline("plain", server, msgs, formats, c))
            log(f"ceiling repeat {r + 1}: calls/s aidsafe {runs['aidsafe'][-1]['calls_per_s']:.0f}, plain {runs['plain'][-1]['calls_per_s']:.0f}")
    keys = ["calls_per_s", "cpu_ms_per_call", "wall_s", "calls", "server_cpu_s"]
    med = {k: medians(v, keys) for k, v in runs.items()}
    return {
        "params": {"prompts": n, "concurrency": c, "latency_s": 0.0},
        "median": {
            "aidsafe_calls_per_s": med["aidsafe"]["calls_per_s"],
            "plain_calls_per_s": med["plain"]["calls_per_s"],
            "aidsafe_share_of_plain": med["aidsafe"]["calls_per_s"] / med["plain"]["calls_per_s"],
            "aidsafe_prompts_per_s": med["aidsafe"]["calls_per_s"] / 4,
            "server_cpu_share_aidsafe_run": med["aidsafe"]["server_cpu_s"] / med["aidsafe"]["wall_s"],
        },
        "target": {},
        "met": None,
        "runs": runs,
    }


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    m, p = result["median"], result["params"]
    tag = f"ceiling ({p['prompts']} prompts, c={p['concurrency']}, 0 s)"
    return [
        Row(tag, "model calls/s through aidsafe", fmt(m["aidsafe_calls_per_s"], 0)),
        Row(tag, "model calls/s, plain AsyncOpenAI", fmt(m["plain_calls_per_s"], 0)),
        Row(tag, "aidsafe / plain", fmt(m["aidsafe_share_of_plain"])),
    ]
