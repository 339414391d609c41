"""A simulated OpenAI-compatible chat-completions server for the benchmarks (no model, no network).

It answers ``POST /v1/chat/completions`` with JSON that is valid against the schema of the reply
kind the request asks for (``response_format.json_schema.name``: ``intents``, ``draft``,
``deliberation``, ``refinement``; the ``json_object`` + ``schema`` form is recognised too; any other
schema gets a small valid instance, see ``minimal_instance``), after
``--latency`` seconds (``asyncio.sleep``, so thousands of requests can wait at once). Deliberators
agree in round ``--rounds-to-consensus`` (default 1: the first agent agrees at once, so one prompt
through ``graphs/aidsafe.yaml`` costs 4 calls: intent, init, agent_1, refine) and disagree, with one
corrected thought and a new response, in the rounds before it.

With ``--slots N`` it queues as vLLM does beyond ``--max-num-seqs``: at most N chat requests are
served at once, each for ``--latency`` seconds; the others wait in a FIFO queue, and nothing is
refused. A request whose client hangs up (a client-side timeout) is dropped, from the queue or from
its slot, as vLLM aborts it; with ``--serve-abandoned`` it is served all the same, as by a server
that does not notice (older vLLM with non-streaming requests, a proxy that keeps the upstream call).

It is a minimal asyncio HTTP/1.1 server (``asyncio.Protocol``, keep-alive, ``Content-Length``
bodies; no dependency outside the standard library) so that its own cost stays small: replies
are built once per (model, kind, policy id, agree) and reused. ``GET /stats`` returns request
counts and the server's own CPU time; ``POST /reset`` zeroes the counts.

Run it alone::

    python bench/sim_server.py --port 8000 --latency 1
    python bench/sim_server.py --port 8000 --latency 0.5 --slots 4    # 4 at once, the rest queued

or from Python, in a separate process (its CPU is then not the client's)::

    from sim_server import SimServer
    with SimServer(latency=0.0) as server:
        print(server.url)           # http://127.0.0.1:PORT/v1
        print(server.stats())
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from typing import Any

__all__ = ["SimServer", "reply_content", "serve"]

_TURN = re.compile(r"You are (\S+?)[;,] (?:this is )?round (\d+) of at most (\d+)")


# -- replies ------------------------------------------------------------------------------------


def _kind_of(fmt: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The reply kind and schema a ``response_format`` asks for."""
    if fmt.get("type") == "json_schema":
        js = fmt.get("json_schema") or {}
        schema = js.get("schema") or {}
        name = js.get("name")
        if name in ("intents", "draft", "deliberation", "refinement"):
            return name, schema
    else:
        schema = fmt.get("schema") or {}
    props = set((schema or {}).get("properties", {}))
    if props == {"explicit", "implicit"}:
        return "intents", schema
    if "verdict" in props:
        return "deliberation", schema
    if props == {"thoughts", "response"}:
        return "draft", schema
    if "removed" in props:
        return "refinement", schema
    return None, schema


def minimal_instance(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """A small value valid against ``schema`` (objects with their required properties, ``$ref`` into ``$defs``).

    The answer to a schema that is no aidsafe reply kind, e.g. the probe a client sends to learn
    whether the server supports structured output.
    """
    defs = schema.get("$defs", defs or {})
    if "$ref" in schema:
        return minimal_instance(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0], defs)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal_instance(props[name], defs) for name in schema.get("required", list(props)) if name in props}
    return {"array": [], "string": "x", "integer": 0, "number": 0, "boolean": False}.get(kind)


def _policy_id(schema: dict[str, Any]) -> str:
    """First policy id the schema allows for a thought (``enum``), else ``P1``."""
    try:
        enum = schema["properties"]["thoughts"]["items"]["properties"]["policies"]["items"].get("enum")
    except (KeyError, TypeError, AttributeError):
        enum = None
    return enum[0] if enum else "P1"


def reply_content(kind: str, pid: str = "P1", agree: bool = True, rewrite: bool = False) -> str:
    """Schema-valid JSON content of a reply of ``kind`` (a refinement writes the response only
    where ``rewrite``: its schema asks for one)."""
    if kind == "intents":
        return json.dumps({"explicit": ["The user asks for information on the topic."], "implicit": ["Learn about the topic safely."]})
    if kind == "draft":
        return json.dumps(
            {
                "thoughts": [{"text": f"The request touches policy {pid}; the safe part can be answered.", "policies": [pid]}],
                "response": "A safe, helpful answer.",
            }
        )
    if kind == "deliberation":
        critique = {
            "intents": "Both intents are handled.",
            "policies": f"{pid} applies and is cited." if agree else f"The thoughts do not say why {pid} applies.",
            "flaws": "No thought is wrong.",
            "refusal": "The response neither over-refuses nor under-refuses.",
        }
        if agree:
            return json.dumps({"critique": critique, "verdict": {"agree": True, "superseded": [], "thoughts": [], "response": ""}})
        verdict = {"agree": False, "superseded": [], "thoughts": [{"text": f"Correction: say why {pid} applies.", "policies": [pid]}], "response": "An improved safe answer."}
        return json.dumps({"critique": critique, "verdict": verdict})
    if kind == "refinement":
        return json.dumps({"removed": [], "response": "The final safe answer."} if rewrite else {"removed": []})
    raise ValueError(f"unknown reply kind {kind!r}")


class _State:
    def __init__(self, latency: float, rounds_to_consensus: int, slots: int = 0, serve_abandoned: bool = False) -> None:
        self.latency = latency
        self.rounds_to_consensus = rounds_to_consensus
        self.slots = slots
        """Chat requests served at once (0: no limit); the rest wait in ``waiting``, first come first served."""
        self.serving = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.peak_waiting = 0
        self.aborted = 0
        """Requests dropped because their client hung up before the reply (queued or being served)."""
        self.serve_abandoned = serve_abandoned
        self.abandoned = 0
        """Requests served although their client had hung up (``serve_abandoned``)."""
        self.counts: Counter[str] = Counter()
        self.cache: dict[tuple[str, str, str, bool, bool], bytes] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.connections = 0
        self.first_request: float | None = None
        """Wall clock (``time.time()``) of the first chat request since the start or the last reset."""
        self.last_reply: float | None = None
        """Wall clock of the last chat reply sent."""

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "GET" and path.rstrip("/").endswith("/stats"):
            payload = {
                "requests": sum(v for k, v in self.counts.items() if not k.startswith("_")),
                "by_kind": dict(self.counts),
                "cpu_s": time.process_time(),
                "peak_in_flight": self.peak_in_flight,
                "connections": self.connections,
                "latency": self.latency,
                "rounds_to_consensus": self.rounds_to_consensus,
                "slots": self.slots,
                "peak_waiting": self.peak_waiting,
                "aborted": self.aborted,
                "abandoned": self.abandoned,
                "first_request_t": self.first_request,
                "last_reply_t": self.last_reply,
            }
            return 200, json.dumps(payload).encode()
        if method == "POST" and path.rstrip("/").endswith("/reset"):
            self.counts.clear()
            self.peak_in_flight = self.in_flight
            self.peak_waiting = len(self.waiting)
            self.aborted = self.abandoned = 0
            self.first_request = self.last_reply = None
            return 200, b'{"ok": true}'
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, b'{"object": "list", "data": [{"id": "sim", "object": "model", "owned_by": "bench"}]}'
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}'
        try:
            req = json.loads(body)
            kind, schema = _kind_of(req.get("response_format") or {})
        except (ValueError, AttributeError):
            return 400, b'{"error": {"message": "body is not JSON", "type": "invalid_request_error"}}'
        if self.first_request is None:
            self.first_request = time.time()
        if kind is None:
            if not schema:
                return 400, b'{"error": {"message": "response_format carries no JSON schema", "type": "invalid_request_error"}}'
            self.counts["other"] += 1
            content = json.dumps(minimal_instance(schema))
            return 200, json.dumps({
                "id": "chatcmpl-sim", "object": "chat.completion", "created": int(time.time()), "model": str(req.get("model", "sim")),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }).encode()
        agree = True
        pid = "P1"
        if kind in ("draft", "deliberation"):
            pid = _policy_id(schema)
        if kind == "deliberation":
            messages = req.get("messages") or []
            last = messages[-1].get("content", "") if messages else ""
            match = _TURN.search(last if isinstance(last, str) else "")
            if match:
                agree = int(match.group(2)) >= self.rounds_to_consensus
        rewrite = kind == "refinement" and "response" in (schema or {}).get("properties", {})
        model = str(req.get("model", "sim"))
        self.counts[kind] += 1
        key = (model, kind, pid, agree, rewrite)
        out = self.cache.get(key)
        if out is None:
            content = reply_content(kind, pid, agree, rewrite)
            out = json.dumps(
                {
                    "id": "chatcmpl-sim",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
            ).encode()
            self.cache[key] = out
        return 200, out


    async def serve_slot(self) -> None:
        """Hold one of ``slots`` for ``latency`` seconds, after the requests queued before this one."""
        if self.serving < self.slots and not self.waiting:
            self.serving += 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(turn)
            self.peak_waiting = max(self.peak_waiting, len(self.waiting))
            try:
                await turn  # a finished request hands its slot over
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_over()  # handed over as it was dropped: pass it on
                elif turn in self.waiting:
                    self.waiting.remove(turn)
                raise
        try:
            await asyncio.sleep(self.latency)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.serving -= 1


# -- HTTP/1.1 -----------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Conn(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered in order."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed reply is pending: parse the next request after it
        self.closed = False
        self.pending: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state.slots and self.pending is not None and not self.pending.done():
            if self.state.serve_abandoned:
                self.state.abandoned += 1
            else:
                self.state.aborted += 1
                self.pending.cancel()  # the client hung up: drop its request, as vLLM aborts it

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        while not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, path, version = lines[0].split(" ", 2)
            except ValueError:
                self._write(400, b'{"error": {"message": "bad request line"}}', False)
                return
            length = 0
            keep_alive = version == "HTTP/1.1"
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection":
                    v = value.strip().lower()
                    keep_alive = v == "keep-alive" or (keep_alive and v != "close")
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                self._write(411, b'{"error": {"message": "send Content-Length"}}', False)
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            status, payload = self.state.answer(method, path, body)
            chat = method == "POST" and path.rstrip("/").endswith("/chat/completions")
            delayed = status == 200 and method == "POST" and self.state.latency > 0 and path.rstrip("/").endswith("/chat/completions")
            if delayed:
                self.busy = True
                self.pending = asyncio.get_running_loop().create_task(self._later(status, payload, keep_alive))
                return
            self._write(status, payload, keep_alive)
            if chat:
                self.state.last_reply = time.time()
            if not keep_alive:
                return

    async def _later(self, status: int, payload: bytes, keep_alive: bool) -> None:
        st = self.state
        st.in_flight += 1
        st.peak_in_flight = max(st.peak_in_flight, st.in_flight)
        try:
            if st.slots:
                await st.serve_slot()
            else:
                await asyncio.sleep(st.latency)
        finally:
            st.in_flight -= 1
        self._write(status, payload, keep_alive)
        st.last_reply = time.time()
        self.busy = False
        if keep_alive:
            self._drain()

    def _write(self, status: int, payload: bytes, keep_alive: bool) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(_response(status, payload, keep_alive))
        if not keep_alive:
            self.transport.close()
            self.closed = True


async def serve(host: str = "127.0.0.1", port: int = 0, latency: float = 0.0, rounds_to_consensus: int = 1, slots: int = 0,
                serve_abandoned: bool = False) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT); prints ``listening on URL`` once bound."""
    state = _State(latency, rounds_to_consensus, slots, serve_abandoned)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(state), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound}/v1", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on POSIX
            pass
    async with server:
        await stop.wait()


# -- helper to run it in another process --------------------------------------------------------


class SimServer:
    """Start ``sim_server.py`` in a child process on a free port; stop it on exit."""

    def __init__(self, latency: float = 0.0, rounds_to_consensus: int = 1, host: str = "127.0.0.1", slots: int = 0,
                 serve_abandoned: bool = False) -> None:
        self.latency = latency
        self.rounds_to_consensus = rounds_to_consensus
        self.host = host
        self.slots = slots
        self.serve_abandoned = serve_abandoned
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> SimServer:
        cmd = [
            sys.executable, os.path.abspath(__file__), "--host", self.host, "--port", "0",
            "--latency", str(self.latency), "--rounds-to-consensus", str(self.rounds_to_consensus), "--slots", str(self.slots),
            *(["--serve-abandoned"] if self.serve_abandoned else []),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("listening on "):
                self.url = line.split("listening on ", 1)[1].strip()
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"simulated server did not start (last output: {line!r})")

    def _get(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(self.url.rsplit("/v1", 1)[0] + "/v1" + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """Request counts by kind, total requests, the server's CPU seconds, peak in flight (and, with
        ``slots``, the longest queue and the requests whose client hung up: dropped, or served anyway)."""
        return self._get("/stats")

    def reset(self) -> None:
        self._get("/reset", method="POST")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


async def _hammer(url: str, requests: int, concurrency: int, body: bytes) -> float:
    """Raw keep-alive HTTP/1.1 client (no SDK cost): ``requests`` POSTs over ``concurrency`` connections."""
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    per = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for _ in range(count):
            writer.write(head + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", raw).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if not raw.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(raw[:200])
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in per if n))
    return time.perf_counter() - t0


def selftest(requests: int = 5000, concurrency: int = 64, latency: float = 0.0) -> dict[str, Any]:
    """Start a server process and load it with a raw client: its capacity, without any SDK's cost."""
    messages = [{"role": "system", "content": "policy text " * 300}, {"role": "user", "content": "User query:\nHow do I pick a lock?"}]
    schema = {"type": "object", "properties": {"explicit": {"type": "array"}, "implicit": {"type": "array"}}}
    body = json.dumps({"model": "sim", "messages": messages, "max_tokens": 768,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "intents", "schema": schema, "strict": True}}}).encode()
    with SimServer(latency=latency) as server:
        wall = asyncio.run(_hammer(server.url, requests, concurrency, body))
        stats = server.stats()
    return {"requests": stats["requests"], "concurrency": concurrency, "latency_s": latency, "wall_s": round(wall, 3),
            "requests_per_s": round(stats["requests"] / wall, 1), "server_cpu_s": round(stats["cpu_s"], 3),
            "peak_in_flight": stats["peak_in_flight"], "request_bytes": len(body)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each chat reply (asyncio sleep)")
    parser.add_argument(
        "--rounds-to-consensus", type=int, default=1,
        help="deliberators agree from this round on (1: the first agent agrees at once); above max_rounds: never",
    )
    parser.add_argument("--slots", type=int, default=0,
                        help="chat requests served at once, the rest queued first come first served (vLLM's --max-num-seqs); 0: no limit")
    parser.add_argument("--serve-abandoned", action="store_true",
                        help="with --slots: serve a request whose client hung up all the same (default: drop it, as vLLM aborts it)")
    parser.add_argument("--selftest", action="store_true",
                        help="start a server process, load it with a raw HTTP client (--requests, --concurrency), print its rate")
    parser.add_argument("--requests", type=int, default=5000, help="with --selftest")
    parser.add_argument("--concurrency", type=int, default=64, help="with --selftest")
    args = parser.parse_args(argv)
    if args.selftest:
        print(json.dumps(selftest(args.requests, args.concurrency, args.latency)))
        return
    try:
        asyncio.run(serve(args.host, args.port, args.latency, args.rounds_to_consensus, args.slots, args.serve_abandoned))
    except KeyboardInterrupt:  # pragma: no cover
        pass


if __name__ == "__main__":
    main()
