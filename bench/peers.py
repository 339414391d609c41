"""The peer benchmark: aidsafe against Bespoke Curator, distilabel and a bare asyncio + openai client.

Every client is a whole process, started as a user would start it, against the same simulated
server (``sim_server.py``, its own process, ``--latency`` seconds per call). The clients run side by
side within each repeat (in turn, rotated per repeat) and the figures are medians over the repeats:

- **wall time** of the whole process, start-up included, and **efficiency** = the least wall time
  any client could take (``ceil(prompts / concurrency)`` waves of ``calls per prompt x latency``)
  divided by the wall time;
- **marginal client CPU per call**, start-up excluded: the client's CPU time (user + system, with
  its child processes, from ``wait4``) at ``--sizes`` large minus at small, over the difference in
  calls the server answered;
- peak RSS of the client process (with its children, the largest one), started from a small
  launcher so that it is its own.

aidsafe's bytecode is written first (``compileall``), as a wheel install does: the peers, installed
by pip, have theirs.

Clients: ``aidsafe`` (its CLI, ``python -m aidsafe generate``), ``bare`` (``peer_clients.py``:
``asyncio`` + ``openai.AsyncOpenAI`` making the same calls), and, for the single-call graph only,
``curator`` and ``distilabel`` (``peer_clients.py`` under ``--peers-python``, a Python whose
environment has the extra ``[peers]``; they are left out when it has not).

    python bench/peers.py --peers-python .venv-peers/bin/python            # 600 prompts (and 100 for the CPU)
    python bench/peers.py --peers-python .venv-peers/bin/python --sizes 20000 --repeats 1 --graphs single

Writes ``bench/peers.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python bench/peers.py: run as python -m bench.peers
    import _script

    _script.run_as_module("bench.peers")

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.common import BENCH_DIR, MODEL, compile_aidsafe, log, make_prompts, median

CLIENT_SCRIPT = BENCH_DIR / "peer_clients.py"
CALLS_PER_PROMPT = {"single": 1, "aidsafe": 4}
PEERS = ("curator", "distilabel")


# -- the calls each prompt makes ----------------------------------------------------------------


def render_calls(graph: str, prompts: list[str]) -> list[dict[str, Any]]:
    """Per prompt, the requests aidsafe sends for it (messages and response_format), for the other clients."""
    if graph == "aidsafe":
        from bench.baselines import rendered_calls
        from bench.common import ROLES

        msgs, formats = rendered_calls(prompts)
        return [
            {"id": f"p{i}", "calls": [{"messages": m[role], "response_format": formats[role]} for role in ROLES]}
            for i, m in enumerate(msgs)
        ]
    import aidsafe

    settings = aidsafe.ModelSettings(backend="openai", base_url="http://127.0.0.1:9/v1", model=MODEL)
    pipe = aidsafe.Pipeline("single", "aidsafe5", settings)
    binding = pipe.binding("single")
    fmt = {"type": "json_schema", "json_schema": {"name": binding.kind.name, "schema": binding.schema, "strict": True}}
    return [{"id": f"p{i}", "calls": [{"messages": pipe.messages("single", p), "response_format": fmt}]} for i, p in enumerate(prompts)]


# -- one whole process --------------------------------------------------------------------------


def client_command(client: str, graph: str, prompts_path: Path, calls_path: Path, out: Path, url: str,
                   concurrency: int, peers_python: str) -> list[str]:
    if client == "aidsafe":
        return [
            sys.executable, "-m", "aidsafe", "generate", str(prompts_path), "-o", str(out), "--graph", graph,
            "--policies", "aidsafe5", "--base-url", url, "--model", MODEL, "--concurrency", str(concurrency), "--overwrite",
        ]
    python = sys.executable if client == "bare" else peers_python
    return [python, str(CLIENT_SCRIPT), client, str(calls_path), str(out), "--url", url, "--concurrency", str(concurrency)]


_LAUNCHER = r"""
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - t0, "rc": os.waitstatus_to_exitcode(status),
                  "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""
"""Starts a client and reports its wall time and ``wait4`` figures. Linux keeps a process's peak RSS
across ``exec``, so a client forked from this benchmark's process (which holds every rendered
call) would report that process's size as its own peak; forked from this small launcher it
reports its own."""


def run_process(cmd: list[str], server: SimServer, out: Path, workdir: Path) -> dict[str, Any]:
    """Run ``cmd`` to its end; its wall time, CPU (with children), peak RSS, calls served, records written."""
    before = server.stats()
    err_path = workdir / "stderr.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TELEMETRY_ENABLED="false")
    with err_path.open("w") as err:
        done = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], stdout=subprocess.PIPE, stderr=err, cwd=workdir, env=env,
                              text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    after = server.stats()
    records = sum(1 for line in out.open(encoding="utf-8") if line.strip()) if out.exists() else 0
    result = {**figures, "calls": after["requests"] - before["requests"], "records": records}
    if result["rc"] != 0:
        result["stderr_tail"] = err_path.read_text(errors="replace")[-2000:]
    return result


def has_peers(python: str) -> dict[str, str]:
    """The versions of Curator and distilabel under ``python`` (empty when they are not installed)."""
    code = (
        "import json, importlib.metadata as m\nout = {}\n"
        "for name in ('bespokelabs-curator', 'distilabel', 'openai', 'litellm', 'aiohttp', 'pydantic'):\n"
        "    try: out[name] = m.version(name)\n    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    try:
        return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def versions() -> dict[str, str]:
    import importlib.metadata as m

    out = {}
    for name in ("aidsafe", "langgraph", "langchain-openai", "openai", "httpx", "pydantic"):
        try:
            out[name] = m.version(name)
        except m.PackageNotFoundError:
            pass
    return out


# -- the benchmark ------------------------------------------------------------------------------


def bench(sizes: list[int], graphs: list[str], clients: list[str], concurrency: int, latency: float, repeats: int,
          peers_python: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    compile_aidsafe()
    with tempfile.TemporaryDirectory(prefix="aidsafe-peers-") as tmp, SimServer(latency=latency, process=True) as server:
        root = Path(tmp)
        for size in sizes:
            # each prompt made unique, so that no client may answer one prompt's call from another's
            prompts = [f"{p} (#{i})" for i, p in enumerate(make_prompts(size))]
            prompts_path = root / f"prompts-{size}.jsonl"
            with prompts_path.open("w", encoding="utf-8") as fh:
                for i, p in enumerate(prompts):
                    fh.write(json.dumps({"id": f"p{i}", "prompt": p}) + "\n")
            for graph in graphs:
                calls_path = root / f"calls-{graph}-{size}.jsonl"
                with calls_path.open("w", encoding="utf-8") as fh:
                    for row in render_calls(graph, prompts):
                        fh.write(json.dumps(row) + "\n")
                names = [c for c in clients if graph == "single" or c not in PEERS]
                for rep in range(repeats):
                    order = names[rep % len(names):] + names[: rep % len(names)]
                    for client in order:
                        work = root / f"{client}-{graph}-{size}-{rep}"
                        work.mkdir()
                        out = work / "out.jsonl"
                        cmd = client_command(client, graph, prompts_path, calls_path, out, server.url, concurrency, peers_python)
                        res = run_process(cmd, server, out, work)
                        res.update(client=client, graph=graph, prompts=size, repeat=rep)
                        ideal = math.ceil(size / concurrency) * CALLS_PER_PROMPT[graph] * latency
                        res["efficiency"] = ideal / res["wall_s"]
                        runs.append(res)
                        log(f"{client:10s} {graph:7s} {size:6d} prompts rep {rep}: wall {res['wall_s']:.2f} s, "
                            f"cpu {res['cpu_s']:.2f} s, {res['calls']} calls, {res['records']} records, rc {res['rc']}")
                        if res["rc"] != 0:
                            log(res.get("stderr_tail", ""))
    return {"runs": runs, "summary": summarise(runs, sizes, concurrency, latency)}


def summarise(runs: list[dict[str, Any]], sizes: list[int], concurrency: int, latency: float) -> list[dict[str, Any]]:
    """Per (graph, client, size): median wall, efficiency, CPU, RSS; marginal CPU per call between sizes."""
    rows: list[dict[str, Any]] = []
    keys = sorted({(r["graph"], r["client"]) for r in runs})
    for graph, client in keys:
        per_size: dict[int, dict[str, float]] = {}
        for size in sizes:
            sel = [r for r in runs if (r["graph"], r["client"], r["prompts"]) == (graph, client, size) and r["rc"] == 0]
            if not sel:
                continue
            per_size[size] = {k: median([r[k] for r in sel]) for k in ("wall_s", "efficiency", "cpu_s", "calls", "records", "peak_rss_mb")}
            per_size[size]["ok_runs"] = len(sel)
            per_size[size]["lost"] = sum(size - r["records"] for r in sel)
        row: dict[str, Any] = {"graph": graph, "client": client, "sizes": per_size}
        done = sorted(per_size)
        if len(done) >= 2:
            lo, hi = per_size[done[0]], per_size[done[-1]]
            dc = hi["calls"] - lo["calls"]
            row["marginal_cpu_ms_per_call"] = 1e3 * (hi["cpu_s"] - lo["cpu_s"]) / dc if dc else float("nan")
            row["marginal_between"] = [done[0], done[-1]]
        rows.append(row)
    # ratios to the bare client of the same graph
    for row in rows:
        bare = next((r for r in rows if r["graph"] == row["graph"] and r["client"] == "bare"), None)
        if bare is None:
            continue
        for size, s in row["sizes"].items():
            b = bare["sizes"].get(size)
            if b:
                s["wall_vs_bare"] = s["wall_s"] / b["wall_s"]
        if "marginal_cpu_ms_per_call" in row and "marginal_cpu_ms_per_call" in bare:
            row["cpu_vs_bare"] = row["marginal_cpu_ms_per_call"] / bare["marginal_cpu_ms_per_call"]
    return rows


def table(result: dict[str, Any]) -> str:
    lines = ["| graph | client | prompts | wall s | efficiency | wall / bare | CPU ms/call, whole process | marginal CPU ms/call | CPU / bare | peak RSS MB | records lost |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["summary"]:
        for size, s in sorted(row["sizes"].items()):
            cpu = row.get("marginal_cpu_ms_per_call")
            ratio = f"{row['cpu_vs_bare']:.2f}" if "cpu_vs_bare" in row else ""
            lines.append(
                f"| {row['graph']} | {row['client']} | {size} | {s['wall_s']:.2f} | {s['efficiency']:.3f} | "
                f"{s.get('wall_vs_bare', float('nan')):.3f} | {1e3 * s['cpu_s'] / s['calls']:.2f} | {'' if cpu is None else f'{cpu:.2f}'} | "
                f"{ratio} | {s['peak_rss_mb']:.0f} | {s['lost']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,600", help="prompt counts, comma-separated; CPU per call is marginal between the first and last")
    parser.add_argument("--graphs", default="single,aidsafe", help="single (1 call per prompt) and/or aidsafe (4)")
    parser.add_argument("--clients", default="bare,aidsafe,curator,distilabel")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers-python", default=sys.executable, help="a Python with the extra [peers] (Curator, distilabel)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "peers.json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    graphs = [g for g in args.graphs.split(",") if g]
    clients = [c for c in args.clients.split(",") if c]
    peer_versions = has_peers(args.peers_python)
    missing = [c for c in PEERS if c in clients and {"curator": "bespokelabs-curator", "distilabel": "distilabel"}[c] not in peer_versions]
    if missing:
        log(f"left out (not installed under {args.peers_python}): {', '.join(missing)}")
        clients = [c for c in clients if c not in missing]
    t0 = time.time()
    result = bench(sizes, graphs, clients, args.concurrency, args.latency, args.repeats, args.peers_python)
    result["config"] = {
        "sizes": sizes, "graphs": graphs, "clients": clients, "concurrency": args.concurrency, "latency_s": args.latency,
        "repeats": args.repeats, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)),
        "took_s": round(time.time() - t0, 1), "machine": f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        "versions": versions(), "peer_versions": peer_versions,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(table(result))
    log(f"wrote {args.out} in {result['config']['took_s']} s")


if __name__ == "__main__":
    main()
