"""endpoints: efficiency and client CPU per call across several simulated endpoints.

``--endpoint-count`` simulated servers (each its own process, ``--latency`` seconds per call) serve
one model; aidsafe routes the calls of ``--endpoint-concurrency`` prompts in flight (each of the
listed levels) across them. Efficiency is achieved calls/s over the ideal (prompts in flight ÷
latency); client CPU per call should stay flat as the load grows, until one client core is the
limit. The same load against one endpoint is measured alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.common import MODEL, generate_kwargs, log, median, write_prompts
from bench.report import Row, fmt

__all__ = ["measure", "rows"]


def _pipeline(urls: list[str]) -> Any:
    import aidsafe
    from aidsafe.models.endpoints import Endpoint

    endpoints = tuple(Endpoint(url=u) for u in urls) if len(urls) > 1 else ()
    settings = aidsafe.ModelSettings(backend="openai", base_url=urls[0], model=MODEL, endpoints=endpoints, max_retries=0, timeout=60.0,
                                     max_in_flight=1024)
    return aidsafe.Pipeline("aidsafe", "aidsafe5", settings)


def _run(servers: list[SimServer], inp: Path, out: Path, concurrency: int) -> dict[str, Any]:
    pipe = _pipeline([s.url for s in servers])
    before = [s.stats()["requests"] for s in servers]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(pipe.agenerate(inp, out, **generate_kwargs(pipe, concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    per_server = [s.stats()["requests"] - b for s, b in zip(servers, before, strict=True)]
    calls = sum(per_server)
    return {"wall_s": wall, "cpu_s": cpu, "calls": calls, "calls_per_s": calls / wall, "cpu_ms_per_call": 1e3 * cpu / calls,
            "per_endpoint_calls": per_server}


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--endpoint-count``, ``--endpoint-concurrency``, ``--latency``, ``--repeats``)."""
    levels = [int(x) for x in str(args.endpoint_concurrency).split(",")]
    out: dict[str, Any] = {"params": {"endpoints": args.endpoint_count, "latency_s": args.latency, "levels": levels}, "levels": {}}
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(SimServer(latency=args.latency, process=True)) for _ in range(args.endpoint_count)]
        for c in levels:
            inp = write_prompts(tmp / f"endpoints-{c}.jsonl", 2 * c, seed=5)
            ideal = c / args.latency
            level: dict[str, Any] = {}
            for name, group in (("several", servers), ("one", servers[:1])):
                runs = []
                for r in range(args.repeats):
                    run = _run(group, inp, tmp / f"endpoints-{c}-{name}.out.jsonl", c)
                    run["efficiency"] = run["calls_per_s"] / ideal
                    runs.append(run)
                    log(f"{len(group)} endpoint(s), {c} in flight, repeat {r + 1}: efficiency {run['efficiency']:.3f}, "
                        f"{run['cpu_ms_per_call']:.2f} ms CPU/call, calls per endpoint {run['per_endpoint_calls']}")
                level[name] = {"efficiency": median([x["efficiency"] for x in runs]), "cpu_ms_per_call": median([x["cpu_ms_per_call"] for x in runs]),
                               "client_cpu_share": median([x["cpu_s"] / x["wall_s"] for x in runs]), "runs": runs}
            out["levels"][str(c)] = level
    return out


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    p = result["params"]
    out = []
    for c, level in result["levels"].items():
        tag = f"endpoints ({2 * int(c)} prompts, c={c}, {p['latency_s']:g} s)"
        several, one = level["several"], level["one"]
        out += [
            Row(tag, f"efficiency across {p['endpoints']} endpoints / on one", f"{fmt(several['efficiency'], 3)} / {fmt(one['efficiency'], 3)}"),
            Row(tag, f"client CPU ms / call across {p['endpoints']} / on one", f"{fmt(several['cpu_ms_per_call'], 2)} / {fmt(one['cpu_ms_per_call'], 2)}"),
            Row(tag, "client CPU busy (CPU s / wall s), several endpoints", fmt(several["client_cpu_share"], 2)),
        ]
    return out
