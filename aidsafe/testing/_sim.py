"""The simulated OpenAI-compatible server: replies, faults, the asyncio HTTP/1.1 server, the CLI.

Standard library only (jinja2 is imported when a chat template is set), so that this file also
runs as a script: :class:`SimServer` with ``process=True`` starts it that way, in a child process
that does not pay for importing aidsafe (its CPU time is what ``/stats`` reports).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

__all__ = ["Script", "SimServer", "TemplateRaised", "main", "minimal_instance", "render_chat_template", "reply_content", "serve"]

Script = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]
"""A per-request hook: ``script(number, body)``, see :attr:`SimServer.script`."""

if TYPE_CHECKING:
    from typing_extensions import Self

_TURN = re.compile(r"You are (\S+?)[;,] (?:this is )?round (\d+) of at most (\d+)")
_KINDS = ("intents", "draft", "deliberation", "refinement")


# -- replies ------------------------------------------------------------------------------------


def _schema_of(fmt: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` carries (``json_schema.schema``, or llama.cpp's
    ``json_object`` + ``schema``); None where it carries none."""
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    return fmt.get("schema")


def _kind_of(fmt: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The reply kind (of aidsafe's four) and the schema a ``response_format`` asks for."""
    schema = _schema_of(fmt) or {}
    if fmt.get("type") == "json_schema":
        name = (fmt.get("json_schema") or {}).get("name")
        if name in _KINDS:
            return name, schema
    props = set(schema.get("properties", {}))
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
    table: dict[str, Any] = schema.get("$defs") or defs or {}
    if "$ref" in schema:
        return minimal_instance(table.get(schema["$ref"].rsplit("/", 1)[-1], {}), table)
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0], table)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal_instance(props[name], table) for name in schema.get("required", list(props)) if name in props}
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


PLAIN_REPLY = "A safe, helpful answer."
"""The content of a reply to a request that asks for no JSON (no ``response_format``, or ``text``)."""


class TemplateRaised(Exception):
    """A chat template called ``raise_exception``."""


def render_chat_template(template: str, messages: list[dict[str, Any]]) -> str:
    """Render ``messages`` as transformers' ``apply_chat_template`` does (a sandboxed Jinja
    environment with ``raise_exception``), the way vLLM builds a prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateRaised(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)


def _error(message: str, kind: str = "invalid_request_error", **extra: Any) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, **extra}}).encode()


# -- the server ---------------------------------------------------------------------------------


class SimServer:
    """A simulated OpenAI-compatible chat-completions server on localhost: no model, no network.

    It answers ``POST /v1/chat/completions`` with JSON valid against the schema the request asks
    for: aidsafe's four reply kinds (``intents``, ``draft``, ``deliberation``, ``refinement``,
    by ``response_format.json_schema.name`` or by their properties; the ``json_object`` +
    ``schema`` form too) get a fixed reply that cites the first policy id the schema allows, any
    other schema a small valid instance (:func:`minimal_instance`), a request for no JSON a plain
    sentence. Deliberators agree from round ``rounds_to_consensus`` on (1: the first agent agrees,
    so a prompt through ``graphs/aidsafe.yaml`` costs 4 calls) and disagree, with one corrected
    thought, in the rounds before. ``GET /v1/models`` lists ``model``; ``GET /v1/stats`` returns
    request counts by kind and the server's CPU time; ``POST /v1/reset`` zeroes the counts.

    Load: every reply waits ``latency`` seconds (``asyncio.sleep``: thousands can wait at once).
    With ``slots`` N it queues as vLLM does beyond ``--max-num-seqs``: N requests served at once,
    each for ``latency`` seconds, the rest waiting first come first served, nothing refused; a
    request whose client hangs up is dropped, from the queue or its slot, as vLLM aborts it, or
    served all the same with ``serve_abandoned``.

    It runs in a thread of this process (the default), where tests change its behaviour while it
    runs (the attributes below, and :attr:`script`) and read what it received (:attr:`requests`,
    :attr:`headers`); or, with ``process=True``, in a child process of its own (the benchmarks:
    its CPU is then not the client's), driven only by the constructor's settings.

    Use it as a context manager (``with SimServer() as server: server.url``) or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(self, latency: float = 0.0, rounds_to_consensus: int = 1, *, slots: int = 0, serve_abandoned: bool = False,
                 host: str = "127.0.0.1", port: int = 0, model: str = "sim", owned_by: str | None = "sim",
                 usage: tuple[int, int] | None = None, record: bool = True, process: bool = False) -> None:
        self.latency = latency
        """Seconds every chat reply waits (with ``slots``: the seconds it holds its slot)."""
        self.rounds_to_consensus = rounds_to_consensus
        self.slots = slots
        """Chat requests served at once (0: no limit); the rest wait in a queue, first come first served."""
        self.serve_abandoned = serve_abandoned
        self.host = host
        self.port = port
        self.model = model
        """The model id ``GET /v1/models`` lists."""
        self.owned_by = owned_by
        """``owned_by`` of the model in ``GET /v1/models`` (vLLM says ``vllm``); None: that request fails with a 500."""
        self.usage = usage
        """``(prompt_tokens, completion_tokens)`` of every reply; None: 100 and 20 for aidsafe's kinds, 10 and 5 for others."""
        self.record = record
        """Keep every request body and its headers in :attr:`requests` and :attr:`headers`."""
        self.process = process
        self.url = ""
        """``http://HOST:PORT/v1`` once started."""

        # behaviour a test may change while the server runs (in this process)
        self.script: Script | None = None
        """Per-request hook, run in a worker thread: called with (request number from 1, body); may return
        ``{"status": code, "message": text, "headers": {...}}`` (an error reply), ``{"content": text, "finish_reason": reason,
        "logprobs": {...}}`` (this reply instead), ``{"hang": seconds}`` (wait, then answer normally) or ``{"drop": True}``
        (close the connection without answering); None: answer normally."""
        self.status: int | None = None
        """Answer every chat request with this HTTP status (an always-failing server)."""
        self.fail_first = 0
        """Answer the first N chat requests with ``fail_status`` (and ``Retry-After``), then normally."""
        self.fail_status = 429
        self.retry_after: str | None = "0.05"
        self.chat_template: str | None = None
        """A Jinja chat template the server renders each request's messages with, as vLLM does
        (``raise_exception`` included): a template error is answered ``template_status`` with its message."""
        self.template_status = 400
        self.reject_json_schema = False
        """Answer ``response_format`` ``json_schema`` with a 500, as llama-cpp-python's server does."""

        # what it received
        self.requests: list[dict[str, Any]] = []
        """Every chat request's body (with ``record``)."""
        self.headers: list[dict[str, str]] = []
        """Every chat request's headers, names as the client sent them (with ``record``)."""
        self.rendered: list[str] = []
        """The prompts the chat template produced."""
        self.connections: set[int] = set()
        """Client ports seen on chat requests: how many TCP connections the client opened."""
        self.lock = threading.Lock()
        """Held while the lists and counters above change."""
        self.in_flight = 0
        self.peak_in_flight = 0

        # the serving side
        self.counts: Counter[str] = Counter()
        self.number = 0
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._serving = 0
        self.peak_waiting = 0
        self.aborted = 0
        """Requests dropped because their client hung up before the reply (with ``slots``)."""
        self.abandoned = 0
        """Requests served although their client had hung up (``serve_abandoned``)."""
        self.connections_opened = 0
        self.first_request: float | None = None
        """Wall clock (``time.time()``) of the first chat request since the start or the last reset."""
        self.last_reply: float | None = None
        """Wall clock of the last chat reply sent."""
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.proc: subprocess.Popen[str] | None = None

    # -- start and stop ---------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Self:
        """Bind a port (``port`` 0: a free one) and serve until :meth:`stop`; sets :attr:`url`."""
        if self.process:
            return self._start_process(timeout)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._close_all()
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"aidsafe-sim-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError(f"simulated server did not start: {failure[0] if failure else 'timed out'}")
        return self

    async def _listen(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Conn(self), self.host, self.port, backlog=4096, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}/v1"
        return server

    def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()

    def stop(self) -> None:
        """Stop serving (and end the child process); the port is free again."""
        if self.proc is not None:
            self._stop_process()
            return
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._thread = self._loop = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def outage(self, seconds: float) -> None:
        """Stop listening and close every open connection for ``seconds``, then listen again on the
        same port (a server that dies and comes back). Callable from any thread, a script included."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("outage() needs a server running in this process")

        async def bounce() -> None:
            self._close_all()
            await asyncio.sleep(seconds)
            self._server = await self._listen()

        loop.call_soon_threadsafe(lambda: loop.create_task(bounce()))

    # -- in a child process -----------------------------------------------------------------

    def _start_process(self, timeout: float) -> Self:
        cmd = [
            sys.executable, os.path.abspath(__file__), "--host", self.host, "--port", str(self.port),
            "--latency", str(self.latency), "--rounds-to-consensus", str(self.rounds_to_consensus), "--slots", str(self.slots),
            "--model", self.model, *(["--serve-abandoned"] if self.serve_abandoned else []),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("listening on "):
                self.url = line.split("listening on ", 1)[1].strip()
                self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
                return self
            if not line and self.proc.poll() is not None:
                break
        self._stop_process()
        raise RuntimeError(f"simulated server did not start (last output: {line!r})")

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _http(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    # -- counts -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Request counts by kind, total requests, the serving process's CPU seconds, peak in flight (and,
        with ``slots``, the longest queue and the requests whose client hung up: dropped, or served anyway)."""
        if self.proc is not None:
            return self._http("/stats")
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        return {
            "requests": sum(v for k, v in self.counts.items() if not k.startswith("_")),
            "by_kind": dict(self.counts),
            "cpu_s": time.process_time(),
            "peak_in_flight": self.peak_in_flight,
            "connections": self.connections_opened,
            "latency": self.latency,
            "rounds_to_consensus": self.rounds_to_consensus,
            "slots": self.slots,
            "peak_waiting": self.peak_waiting,
            "aborted": self.aborted,
            "abandoned": self.abandoned,
            "first_request_t": self.first_request,
            "last_reply_t": self.last_reply,
        }

    def reset(self) -> None:
        """Zero the counts of :meth:`stats`."""
        if self.proc is not None:
            self._http("/reset", method="POST")
            return
        with self.lock:
            self.counts.clear()
            self.peak_in_flight = self.in_flight
            self.peak_waiting = len(self._waiting)
            self.aborted = self.abandoned = 0
            self.first_request = self.last_reply = None

    # -- answering --------------------------------------------------------------------------

    def answer(self, body: dict[str, Any]) -> str:
        """The content of the normal reply to a chat request ``body`` (what a script may start from)."""
        kind, content = self._normal(body)
        return content if isinstance(content, str) else reply_content(kind, *content)

    def _normal(self, body: dict[str, Any]) -> tuple[str, str | tuple[str, bool, bool]]:
        """``(kind, content)`` of the normal reply (kind ``other`` for another schema, ``text`` for none); for
        aidsafe's kinds the content is ``(policy id, agree, rewrite)``, the arguments of :func:`reply_content`."""
        fmt = body.get("response_format") or {}
        kind, schema = _kind_of(fmt)
        if kind is None:
            if fmt.get("type") in (None, "text"):
                return "text", PLAIN_REPLY
            return "other", json.dumps(minimal_instance(schema))
        agree = True
        pid = "P1"
        if kind in ("draft", "deliberation"):
            pid = _policy_id(schema)
        if kind == "deliberation":
            messages = body.get("messages") or []
            last = messages[-1].get("content", "") if messages else ""
            match = _TURN.search(last if isinstance(last, str) else "")
            if match:
                agree = int(match.group(2)) >= self.rounds_to_consensus
        rewrite = kind == "refinement" and "response" in schema.get("properties", {})
        return kind, (pid, agree, rewrite)

    def _completion(self, body: dict[str, Any], content: str, kind: str, finish: str = "stop", logprobs: Any = None) -> bytes:
        prompt, completion = self.usage or ((100, 20) if kind in _KINDS else (10, 5))
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        return json.dumps({
            "id": "chatcmpl-sim", "object": "chat.completion", "created": int(time.time()), "model": str(body.get("model", self.model)),
            "choices": [choice], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }).encode()

    def _reply(self, number: int, body: dict[str, Any], fault: dict[str, Any] | None) -> tuple[int, bytes, dict[str, str] | None]:
        """The reply to chat request ``number`` once its wait is over: its fault, the server-wide failures, then the normal one."""
        if fault and "status" in fault:
            return fault["status"], _error(fault["message"], "server_error"), fault.get("headers")
        if self.status is not None:
            return self.status, _error("server says no", "server_error"), None
        if number <= self.fail_first:
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return self.fail_status, _error("slow down", "rate_limit"), headers
        if self.chat_template is not None:
            try:
                prompt = render_chat_template(self.chat_template, body["messages"])
            except TemplateRaised as exc:  # vLLM: 400 BadRequestError with the template's message
                return self.template_status, _error(str(exc), "BadRequestError", param=None, code=self.template_status), None
            with self.lock:
                self.rendered.append(prompt)
        if self.reject_json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
            # what llama-cpp-python's server does
            return 500, json.dumps({"error": {"message": "Input should be 'text' or 'json_object' (response_format.type)"}}).encode(), None
        if fault and "content" in fault:
            kind = _kind_of(body.get("response_format") or {})[0] or "other"
            return 200, self._completion(body, fault["content"], kind, fault.get("finish_reason", "stop"), fault.get("logprobs")), None
        kind, content = self._normal(body)
        with self.lock:
            self.counts[kind] += 1
        if not isinstance(content, str):
            if fault is None:  # built once per (model, kind, policy id, agree, rewrite)
                key = (str(body.get("model", self.model)), kind, *content, self.usage)
                out = self._cache.get(key)
                if out is None:
                    out = self._cache[key] = self._completion(body, reply_content(kind, *content), kind)
                return 200, out, None
            content = reply_content(kind, *content)
        finish = fault.get("finish_reason", "stop") if fault else "stop"
        return 200, self._completion(body, content, kind, finish, fault.get("logprobs") if fault else None), None

    def _route(self, method: str, path: str) -> tuple[int, bytes] | None:
        """Replies to everything but a chat request (None for a chat request)."""
        path = path.split("?", 1)[0].rstrip("/")
        if method == "POST" and path.endswith("/chat/completions"):
            return None
        if method == "GET" and path.endswith("/stats"):
            return 200, json.dumps(self._stats()).encode()
        if method == "POST" and path.endswith("/reset"):
            self.reset()
            return 200, b'{"ok": true}'
        if method == "GET" and path.endswith("/models"):
            if self.owned_by is None:  # a server whose model list cannot be read
                return 500, _error("models unavailable", "server_error")
            return 200, json.dumps({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": self.owned_by}]}).encode()
        return 404, _error("not found")

    def _executor_for_scripts(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=256, thread_name_prefix="aidsafe-sim-script")
        return self._executor

    # -- the vLLM-like queue ----------------------------------------------------------------

    async def _serve_slot(self) -> None:
        """Hold one of ``slots`` for ``latency`` seconds, after the requests queued before this one."""
        if self._serving < self.slots and not self._waiting:
            self._serving += 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            self.peak_waiting = max(self.peak_waiting, len(self._waiting))
            try:
                await turn  # a finished request hands its slot over
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_over()  # handed over as it was dropped: pass it on
                elif turn in self._waiting:
                    self._waiting.remove(turn)
                raise
        try:
            await asyncio.sleep(self.latency)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._serving -= 1


# -- HTTP/1.1 -----------------------------------------------------------------------------------


_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


def _response(status: int, body: bytes, keep_alive: bool, headers: dict[str, str] | None = None) -> bytes:
    reason = _REASONS.get(status, "Unknown")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Conn(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered in order."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.port = 0
        self.busy = False  # a delayed reply is pending: parse the next request after it
        self.closed = False
        self.pending: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.port = peer[1] if isinstance(peer, tuple) and len(peer) > 1 else 0
        self.server.connections_opened += 1
        self.server._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._conns.discard(self)
        srv = self.server
        if srv.slots and self.pending is not None and not self.pending.done():
            if srv.serve_abandoned:
                srv.abandoned += 1
            else:
                srv.aborted += 1
                self.pending.cancel()  # the client hung up: drop its request, as vLLM aborts it

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        while not self.closed and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, path, version = lines[0].split(" ", 2)
            except ValueError:
                self._write(400, _error("bad request line"), False)
                return
            length = 0
            keep_alive = version == "HTTP/1.1"
            chunked = False
            headers: dict[str, str] = {}
            keep = self.server.record or self.server.script is not None  # the headers are kept, or a fault may echo them
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip(), value.strip()
                if keep:
                    headers[name] = value
                low = name.lower()
                if low == "content-length":
                    length = int(value)
                elif low == "connection":
                    v = value.lower()
                    keep_alive = v == "keep-alive" or (keep_alive and v != "close")
                elif low == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                self._write(411, _error("send Content-Length"), False)
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self._request(method, path, headers, body, keep_alive)

    def _request(self, method: str, path: str, headers: dict[str, str], raw: bytes, keep_alive: bool) -> None:
        srv = self.server
        routed = srv._route(method, path)
        if routed is not None:
            self._write(*routed, keep_alive)
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._write(400, _error("body is not JSON"), keep_alive)
            return
        with srv.lock:
            srv.number += 1
            number = srv.number
            if srv.record:
                srv.requests.append(body)
                srv.headers.append(headers)
            srv.connections.add(self.port)
            srv.in_flight += 1
            srv.peak_in_flight = max(srv.peak_in_flight, srv.in_flight)
        if srv.first_request is None:
            srv.first_request = time.time()
        if srv.latency <= 0 and srv.script is None:  # the fast path: answered at once
            try:
                status, payload, extra = srv._reply(number, body, None)
            finally:
                with srv.lock:
                    srv.in_flight -= 1
            self._write(status, payload, keep_alive, extra)
            srv.last_reply = time.time()
            return
        self.busy = True
        self.pending = asyncio.get_running_loop().create_task(self._later(number, body, headers, keep_alive))

    async def _later(self, number: int, body: dict[str, Any], headers: dict[str, str], keep_alive: bool) -> None:
        srv = self.server
        try:
            if srv.slots:
                await srv._serve_slot()
            elif srv.latency > 0:
                await asyncio.sleep(srv.latency)
            fault: dict[str, Any] | None = None
            script = srv.script
            if script is not None:
                fault = await asyncio.get_running_loop().run_in_executor(srv._executor_for_scripts(), script, number, body)
            if fault and "hang" in fault:
                await asyncio.sleep(fault["hang"])
            if fault and fault.get("drop"):
                if self.transport is not None:
                    self.transport.close()
                self.closed = True
                return
            if fault and "status" in fault and not fault.get("message"):
                # echo the request's headers, as a careless server might: a key must survive that
                fault = {**fault, "message": f"injected fault; request headers: {headers}"}
            status, payload, extra = srv._reply(number, body, fault)
        finally:
            with srv.lock:
                srv.in_flight -= 1
        self._write(status, payload, keep_alive, extra)
        srv.last_reply = time.time()
        self.busy = False
        if keep_alive:
            self._drain()

    def _write(self, status: int, payload: bytes, keep_alive: bool, headers: dict[str, str] | None = None) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(_response(status, payload, keep_alive, headers))
        if not keep_alive:
            self.transport.close()
            self.closed = True


# -- standalone ---------------------------------------------------------------------------------


async def serve(host: str = "127.0.0.1", port: int = 0, latency: float = 0.0, rounds_to_consensus: int = 1, slots: int = 0,
                serve_abandoned: bool = False, model: str = "sim") -> None:
    """Serve until cancelled (or SIGTERM/SIGINT); prints ``listening on URL`` once bound."""
    sim = SimServer(latency, rounds_to_consensus, slots=slots, serve_abandoned=serve_abandoned, host=host, port=port, model=model,
                    record=False)
    loop = asyncio.get_running_loop()
    sim._loop = loop
    server = sim._server = await sim._listen()
    print(f"listening on {sim.url}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on POSIX
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


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
    with SimServer(latency=latency, process=True) as server:
        wall = asyncio.run(_hammer(server.url, requests, concurrency, body))
        stats = server.stats()
    return {"requests": stats["requests"], "concurrency": concurrency, "latency_s": latency, "wall_s": round(wall, 3),
            "requests_per_s": round(stats["requests"] / wall, 1), "server_cpu_s": round(stats["cpu_s"], 3),
            "peak_in_flight": stats["peak_in_flight"], "request_bytes": len(body)}


def main(argv: list[str] | None = None) -> None:
    """``python -m aidsafe.testing``: serve until Ctrl-C (or ``--selftest``)."""
    parser = argparse.ArgumentParser(
        prog="python -m aidsafe.testing",
        description="A simulated OpenAI-compatible chat-completions server (no model, no network): schema-valid replies "
                    "to aidsafe's reply kinds after --latency seconds.",
    )
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
    parser.add_argument("--model", default="sim", help="the model id GET /v1/models lists (sim)")
    parser.add_argument("--selftest", action="store_true",
                        help="start a server process, load it with a raw HTTP client (--requests, --concurrency), print its rate")
    parser.add_argument("--requests", type=int, default=5000, help="with --selftest")
    parser.add_argument("--concurrency", type=int, default=64, help="with --selftest")
    args = parser.parse_args(argv)
    if args.selftest:
        print(json.dumps(selftest(args.requests, args.concurrency, args.latency)))
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.latency, args.rounds_to_consensus, args.slots, args.serve_abandoned, args.model))


if __name__ == "__main__":
    main()
