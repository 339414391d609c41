"""queueing: a server that queues instead of refusing, against a client timeout.

vLLM decodes at most ``--max-num-seqs`` requests at once and queues the rest; it answers no 429, the
only sign of overload is latency. The simulated server runs with ``--queue-slots`` slots (4) of
``--queue-latency`` seconds (0.5), so it serves 8 calls a second at most, and ``aidsafe generate``
(the CLI, its own process) sends it ``--queue-prompts`` prompts (40) through ``graphs/aidsafe.yaml``
(4 calls each; ``--queue-graph single``: one) with ``--queue-concurrency`` prompts in flight (32)
and ``--timeout`` ``--queue-timeout`` seconds (3). Sent all at once, 32 calls queue for up to
32 / 4 x 0.5 = 4 s: past the timeout.

It runs against two servers (``--queue-servers``): ``drops``, which drops a request whose client
hung up, as vLLM aborts it, and ``serves``, which serves it all the same (``--serve-abandoned``: a
server or proxy that does not notice), so that every timed-out call also costs the server a slot.

- **ok**: records whose status is ``ok`` (target: every prompt).
- **capacity-bound wall**: the least time the server needs for the calls, ``ceil(calls / slots) x
  latency`` (20 s at the defaults: 160 calls).
- **serving window**: from the first request the server saw to the last reply it sent (start-up
  left out), and its ratio to the capacity-bound wall (target: <= 1.5). The process's whole wall
  time, start-up included, is reported beside it.
- the run's retries (the calls that timed out or were refused, then sent again), the requests the
  server dropped because their client had hung up, and the endpoint's limit at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.common import MODEL, compile_aidsafe, log, make_prompts, median
from bench.report import Row, fmt

__all__ = ["measure", "rows"]

CALLS_PER_PROMPT = {"single": 1, "aidsafe": 4}
TARGET = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Its options on ``run.py``'s command line."""
    parser.add_argument("--queue-prompts", type=int, default=40, help="queueing: prompts (40)")
    parser.add_argument("--queue-concurrency", type=int, default=32, help="queueing: prompts in flight (32)")
    parser.add_argument("--queue-slots", type=int, default=4, help="queueing: requests the server serves at once, the rest queued (4)")
    parser.add_argument("--queue-latency", type=float, default=0.5, help="queueing: seconds per request once served (0.5)")
    parser.add_argument("--queue-timeout", type=float, default=3.0, help="queueing: aidsafe's --timeout (3)")
    parser.add_argument("--queue-graph", default="aidsafe", choices=sorted(CALLS_PER_PROMPT), help="queueing: the graph (aidsafe)")
    parser.add_argument("--queue-servers", default="drops,serves",
                        help="queueing: comma-separated server kinds: drops (a request whose client hung up, as vLLM), serves (serves it anyway)")


def _one(server: SimServer, inp: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "aidsafe", "generate", str(inp), "-o", str(out), "--graph", args.queue_graph, "--policies", "aidsafe5",
        "--base-url", server.url, "--model", MODEL, "--concurrency", str(args.queue_concurrency), "--timeout", f"{args.queue_timeout:g}",
        "--no-progress", "--no-cache", "--overwrite",
    ]
    server.reset()
    t0 = time.perf_counter()
    # run from the output's folder: ``python -m`` puts the working directory first on sys.path
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=out.parent)
    wall = time.perf_counter() - t0
    stats = server.stats()
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()] if out.exists() else []
    summary_path = out.with_name(out.name + ".summary.json")
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    endpoint = next(iter((summary.get("run") or {}).get("endpoints", {}).values()), {})
    calls = args.queue_prompts * CALLS_PER_PROMPT[args.queue_graph]
    bound = math.ceil(calls / args.queue_slots) * args.queue_latency
    window = (stats["last_reply_t"] - stats["first_request_t"]) if stats["first_request_t"] and stats["last_reply_t"] else float("nan")
    errors = sorted({(r.get("error") or {}).get("message", "")[:160] for r in records if r.get("status") != "ok"})
    return {
        "rc": done.returncode, "records": len(records), "ok": sum(r.get("status") == "ok" for r in records),
        "failed": sum(r.get("status") != "ok" for r in records), "process_wall_s": wall, "serving_window_s": window,
        "capacity_bound_s": bound, "window_ratio": window / bound, "process_ratio": wall / bound,
        "requests": stats["requests"], "aborted": stats["aborted"], "abandoned": stats["abandoned"], "peak_waiting": stats["peak_waiting"],
        "peak_in_flight": stats["peak_in_flight"], "retries": summary.get("retries"),
        "endpoint": endpoint, "errors": errors[:3], "stderr_tail": done.stderr[-1500:] if done.returncode not in (0, 1) else "",
    }


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """``--repeats`` runs of the CLI against a queueing server."""
    compile_aidsafe()
    n = args.queue_prompts
    inp = tmp / "queueing.jsonl"
    with inp.open("w", encoding="utf-8") as fh:  # every prompt unique: no reply comes from another's
        for i, p in enumerate(make_prompts(n, seed=5)):
            fh.write(json.dumps({"id": f"q{i}", "prompt": f"{p} (#{i})"}) + "\n")
    kinds = [k.strip() for k in args.queue_servers.split(",") if k.strip()]
    unknown = sorted(set(kinds) - {"drops", "serves"})
    if unknown:
        raise SystemExit(f"--queue-servers: unknown server kind {unknown[0]!r} (drops, serves)")
    by_kind: dict[str, Any] = {}
    keys = ["ok", "failed", "serving_window_s", "process_wall_s", "window_ratio", "process_ratio", "requests", "aborted", "abandoned",
            "peak_waiting"]
    for kind in kinds:
        runs = []
        with SimServer(latency=args.queue_latency, slots=args.queue_slots, serve_abandoned=kind == "serves", process=True) as server:
            for r in range(args.repeats):
                run = _one(server, inp, tmp / "queueing.out.jsonl", args)
                runs.append(run)
                log(f"queueing, server {kind}, repeat {r + 1}: {run['ok']}/{n} ok, serving window {run['serving_window_s']:.2f} s "
                    f"({run['window_ratio']:.2f}x the capacity bound {run['capacity_bound_s']:g} s), process {run['process_wall_s']:.2f} s, "
                    f"{run['requests']} requests, {run['aborted']} dropped, {run['abandoned']} served abandoned, retries {run['retries']}, "
                    f"limit at the end {run['endpoint'].get('limit')}")
                for line in run["errors"]:
                    log(f"  error: {line}")
                if run["stderr_tail"]:
                    log(run["stderr_tail"])
        med = {k: median([float(r[k]) for r in runs]) for k in keys}
        med["retries"] = median([float(r["retries"]) for r in runs if isinstance(r.get("retries"), (int, float))])
        every_ok = all(r["ok"] == n for r in runs)
        by_kind[kind] = {"median": med, "met_each": {"ok": every_ok, "window_ratio": med["window_ratio"] <= TARGET}, "runs": runs}
    return {
        "params": {"prompts": n, "concurrency": args.queue_concurrency, "slots": args.queue_slots, "latency_s": args.queue_latency,
                   "timeout_s": args.queue_timeout, "graph": args.queue_graph,
                   "capacity_bound_s": math.ceil(n * CALLS_PER_PROMPT[args.queue_graph] / args.queue_slots) * args.queue_latency},
        "servers": by_kind,
        "target": {"ok": f"every prompt ({n}) in every repeat", "window_ratio": f"<= {TARGET}"},
        "met": all(all(v["met_each"].values()) for v in by_kind.values()),
    }


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    p = result["params"]
    out = []
    for kind, res in result["servers"].items():
        m, met = res["median"], res["met_each"]
        tag = (f"queueing ({p['prompts']} prompts, c={p['concurrency']}, {p['slots']} slots x {p['latency_s']:g} s, "
               f"--timeout {p['timeout_s']:g}, server {kind} abandoned requests)")
        hung_up = m["aborted"] if kind == "drops" else m["abandoned"]
        out += [
            Row(tag, "prompts ok (median of repeats)", f"{m['ok']:g} / {p['prompts']}", "all, every repeat", met["ok"]),
            Row(tag, f"serving window s (capacity bound {p['capacity_bound_s']:g} s)", fmt(m["serving_window_s"], 2)),
            Row(tag, "serving window / capacity bound", fmt(m["window_ratio"], 2), f"<= {TARGET}", met["window_ratio"]),
            Row(tag, "process wall s, start-up included (ratio)", f"{m['process_wall_s']:.2f} ({m['process_ratio']:.2f})"),
            Row(tag, "requests / of them abandoned by the client (timed out) / retries", f"{m['requests']:g} / {hung_up:g} / {m['retries']:g}"),
        ]
    return out
