"""clients: several client processes sharing the load across several simulated endpoints.

One job is split into ``P`` shards (``aidsafe generate --shard i/P``), each a whole ``aidsafe``
process with ``c / P`` prompts in flight, all routed over the same ``--endpoint-count`` simulated
servers (an endpoints file, ``--endpoints``); ``P = 1`` is one process carrying the whole load.
Each level ``c`` of ``--clients-levels`` runs ``2 c`` prompts through ``graphs/aidsafe.yaml`` (4 calls
each) for every process count of ``--client-processes``.

- **efficiency** = calls answered ÷ the serving window ÷ the ideal rate (``c / latency``). The
  window runs from the first request any server saw to the last reply any server sent, so the
  processes' start-up (imports, about 1.3 s of CPU each) is left out, but any process that starts
  late or lags counts against it.
- **client CPU per call**, marginal: the CPU the processes spent in their runs (``run.cpu_seconds`` of
  each shard's summary) minus what the same processes spent on a run of 2 prompts each (the
  one-time cost: the model client's imports happen at the first call), over the difference in
  calls answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.common import MODEL, log, median, write_prompts
from bench.report import Row, fmt

__all__ = ["measure", "rows"]


def _shards(servers: list[SimServer], inp: Path, out_dir: Path, concurrency: int, processes: int) -> dict[str, Any]:
    endpoints = out_dir / "endpoints.yaml"
    endpoints.write_text("endpoints:\n" + "".join(f"  - url: {s.url}\n" for s in servers), encoding="utf-8")
    for s in servers:
        s.reset()
    procs, outs = [], []
    for i in range(processes):
        out = out_dir / f"shard-{i}.jsonl"
        outs.append(out)
        cmd = [
            sys.executable, "-m", "aidsafe", "generate", str(inp), "-o", str(out), "--graph", "aidsafe", "--policies", "aidsafe5",
            "--endpoints", str(endpoints), "--model", MODEL, "--concurrency", str(max(1, concurrency // processes)),
            "--shard", f"{i}/{processes}", "--max-in-flight", "1024", "--no-progress", "--overwrite", "--no-cache",
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err[-2000:])
    if errors:
        raise RuntimeError(f"a shard failed: {errors[0]}")
    stats = [s.stats() for s in servers]
    calls = sum(st["requests"] for st in stats)
    window = max(st["last_reply_t"] for st in stats if st["last_reply_t"]) - min(st["first_request_t"] for st in stats if st["first_request_t"])
    summaries = [json.loads(Path(f"{o}.summary.json").read_text(encoding="utf-8")) for o in outs]
    cpu = sum(s["run"]["cpu_seconds"] for s in summaries)
    records = sum(s["records"] for s in summaries)
    return {"calls": calls, "window_s": window, "cpu_s": cpu, "records": records,
            "per_endpoint_calls": [st["requests"] for st in stats], "server_cpu_s": sum(st["cpu_s"] for st in stats)}


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--clients-levels``, ``--client-processes``, ``--endpoint-count``, ``--latency``, ``--repeats``)."""
    levels = [int(x) for x in str(args.clients_levels).split(",")]
    counts = [int(x) for x in str(args.client_processes).split(",")]
    out: dict[str, Any] = {"params": {"endpoints": args.endpoint_count, "latency_s": args.latency, "levels": levels,
                                      "processes": counts, "cores": len(os.sched_getaffinity(0))}, "levels": {}}
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(SimServer(latency=args.latency, process=True)) for _ in range(args.endpoint_count)]
        for c in levels:
            inp = write_prompts(tmp / f"clients-{c}.jsonl", 2 * c, seed=7)
            ideal = c / args.latency
            level: dict[str, Any] = {}
            for p in counts:
                runs = []
                for r in range(args.repeats):
                    work = tmp / f"clients-{c}-{p}-{r}"
                    work.mkdir(parents=True, exist_ok=True)
                    tiny = _shards(servers, write_prompts(work / "tiny.jsonl", 2 * p, seed=8), work, 2 * p, p)
                    t0 = time.perf_counter()
                    run = _shards(servers, inp, work, c, p)
                    run["wall_s"] = time.perf_counter() - t0
                    run["efficiency"] = run["calls"] / run["window_s"] / ideal
                    run["cpu_ms_per_call"] = 1e3 * (run["cpu_s"] - tiny["cpu_s"]) / (run["calls"] - tiny["calls"])
                    run["tiny"] = {k: tiny[k] for k in ("calls", "cpu_s")}
                    runs.append(run)
                    log(f"{p} process(es), {c} in flight, repeat {r + 1}: efficiency {run['efficiency']:.3f} "
                        f"({run['calls']} calls in {run['window_s']:.2f} s), {run['cpu_ms_per_call']:.2f} ms CPU/call, "
                        f"{run['records']} records, calls per endpoint {run['per_endpoint_calls']}")
                level[str(p)] = {k: median([x[k] for x in runs]) for k in ("efficiency", "cpu_ms_per_call", "window_s", "wall_s")}
                level[str(p)]["runs"] = runs
            out["levels"][str(c)] = level
    return out


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    p = result["params"]
    out = []
    for c, level in result["levels"].items():
        tag = f"clients ({2 * int(c)} prompts, c={c}, {p['endpoints']} endpoints, {p['latency_s']:g} s)"
        names = " / ".join(f"{n} proc" for n in level)
        out += [
            Row(tag, f"efficiency (serving window), {names}", " / ".join(fmt(v["efficiency"], 3) for v in level.values()),
                *((">= 0.90 (best)", max(v["efficiency"] for v in level.values()) >= 0.90) if int(c) >= 512 else ())),
            Row(tag, f"marginal client CPU ms / call (all processes), {names}", " / ".join(fmt(v["cpu_ms_per_call"], 2) for v in level.values())),
        ]
    return out
