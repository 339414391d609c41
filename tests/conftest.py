"""Shared fixtures. Tests never reach the network: the fake model answers unless a test opts in."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aidsafe import FakeChatModel, ModelSettings, Pipeline

Responder = Callable[[list[dict[str, str]], str, dict[str, Any]], str]


@pytest.fixture
def fake_pipeline() -> Callable[..., Pipeline]:
    """Build a pipeline whose every model is a fake (a behaviour name, or a scripted responder)."""

    def build(graph: str | Path = "aidsafe", policies: str | Path = "aidsafe5", behaviour: str = "default",
              responder: Responder | None = None, role_models: dict[str, str] | None = None) -> Pipeline:
        def factory(settings: ModelSettings) -> FakeChatModel:
            return FakeChatModel(settings, responder=responder)

        return Pipeline(graph, policies, ModelSettings(backend="fake", model=behaviour), role_models=role_models, model_factory=factory)

    return build



class Stub:
    """Behaviour of the scripted OpenAI-compatible test server (mutable by tests while it runs)."""

    def __init__(self) -> None:
        self.reject_json_schema = False
        self.chat_template: str | None = None
        """A Jinja chat template the server renders each request's messages with, as vLLM does
        (``raise_exception`` included): a template error is answered ``template_status`` with its message."""
        self.template_status = 400
        self.owned_by: str | None = "stub"
        """``owned_by`` of the model in ``GET /v1/models`` (vLLM says ``vllm``); None: that request fails."""
        self.rendered: list[str] = []
        """The prompts the chat template produced."""
        self.status: int | None = None
        """Answer every request with this HTTP status (an always-failing server)."""
        self.fail_first: int = 0
        """Answer the first N requests with ``fail_status`` (and ``Retry-After``), then normally."""
        self.fail_status = 429
        self.retry_after: str | None = "0.05"
        self.latency = 0.0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.script: Callable[[int, dict[str, Any]], dict[str, Any] | None] | None = None
        """Per-request fault: called with (request number from 1, body); may return
        ``{"status": code, "message": text, "headers": {...}}``, ``{"content": text, "finish_reason": reason}``, ``{"hang": seconds}``
        (then answer normally) or ``{"drop": True}`` (close the connection without answering)."""
        self.connections: set[int] = set()
        self.sockets: set[Any] = set()
        """Open client connections (an outage closes them all)."""
        """Client ports seen: how many TCP connections the client opened."""

    def answer(self, body: dict[str, Any]) -> str:
        fmt = body.get("response_format", {})
        schema = fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema" else fmt.get("schema")
        props = set((schema or {}).get("properties", {}))
        if props == {"explicit", "implicit"}:
            return json.dumps({"explicit": ["e"], "implicit": ["i"]})
        if props == {"thoughts", "response"}:
            return json.dumps({"thoughts": [{"text": "t", "policies": ["P1"]}], "response": "r"})
        if "verdict" in props:
            critique = {"intents": "handled", "policies": "applied", "flaws": "no flaw found", "refusal": "neither"}
            return json.dumps({"critique": critique, "verdict": {"agree": True, "superseded": [], "thoughts": [], "response": ""}})
        # the refiner writes the response only where its schema asks for one (rewrite_response)
        return json.dumps({"removed": [], "response": "final"} if "response" in props else {"removed": []})


class TemplateRaised(Exception):
    """A chat template called ``raise_exception``."""


MIXTRAL_CHAT_TEMPLATE = (Path(__file__).parent / "data" / "mixtral_chat_template.jinja").read_text(encoding="utf-8")
"""Mixtral-8x7B-Instruct-v0.1's chat template (its ``tokenizer_config.json``): no system role."""


def render_chat_template(template: str, messages: list[dict[str, Any]]) -> str:
    """Render ``messages`` as transformers' ``apply_chat_template`` does (a sandboxed Jinja
    environment with ``raise_exception``), the way vLLM builds a prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateRaised(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)


@pytest.fixture
def stub_server() -> Iterator[tuple[Stub, str]]:
    """A real HTTP server on localhost speaking the OpenAI chat-completions format, scripted by ``Stub``."""
    with running_stub() as served:
        yield served


@pytest.fixture
def stub_servers() -> Iterator[list[tuple[Stub, str]]]:
    """Three such servers, each with its own script: replicas of one model."""
    with running_stub() as a, running_stub() as b, running_stub() as c:
        yield [a, b, c]


@contextlib.contextmanager
def running_stub() -> Iterator[tuple[Stub, str]]:
    """One scripted server on a free localhost port, for as long as the ``with`` block runs."""
    stub = Stub()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with stub.lock:
                stub.sockets.add(self.connection)

        def finish(self) -> None:
            with stub.lock:
                stub.sockets.discard(self.connection)
            super().finish()

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/").endswith("/models"):
                if stub.owned_by is None:  # a server whose model list cannot be read
                    return self._send(500, {"error": {"message": "models unavailable"}})
                return self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": stub.owned_by}]})
            return self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.requests.append(body)
                stub.headers.append(dict(self.headers))
                stub.connections.add(self.client_address[1])
                number = len(stub.requests)
                stub.in_flight += 1
                stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
            try:
                if stub.latency:
                    time.sleep(stub.latency)
                fault = stub.script(number, body) if stub.script else None
                if fault and "hang" in fault:
                    time.sleep(fault["hang"])
                if fault and fault.get("drop"):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if fault and "status" in fault:
                    # echo the request's headers, as a careless server might: a key must survive that
                    detail = fault.get("message") or f"injected fault; request headers: {dict(self.headers)}"
                    return self._send(fault["status"], {"error": {"message": detail, "type": "server_error"}}, fault.get("headers"))
                if stub.status is not None:
                    return self._send(stub.status, {"error": {"message": "server says no", "type": "server_error"}})
                if number <= stub.fail_first:
                    headers = {"Retry-After": stub.retry_after} if stub.retry_after else {}
                    return self._send(stub.fail_status, {"error": {"message": "slow down", "type": "rate_limit"}}, headers)
                if stub.chat_template is not None:
                    try:
                        prompt = render_chat_template(stub.chat_template, body["messages"])
                    except TemplateRaised as exc:  # vLLM: 400 BadRequestError with the template's message
                        return self._send(stub.template_status, {"error": {"message": str(exc), "type": "BadRequestError",
                                                                           "param": None, "code": stub.template_status}})
                    with stub.lock:
                        stub.rendered.append(prompt)
                if stub.reject_json_schema and body.get("response_format", {}).get("type") == "json_schema":
                    # what llama-cpp-python's server does
                    return self._send(500, {"error": {"message": "Input should be 'text' or 'json_object' (response_format.type)"}})
                content = fault["content"] if fault and "content" in fault else stub.answer(body)
                finish = fault.get("finish_reason", "stop") if fault else "stop"
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}
                if fault and "logprobs" in fault:
                    choice["logprobs"] = fault["logprobs"]
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [choice],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                })
            finally:
                with stub.lock:
                    stub.in_flight -= 1

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client was killed (the crash tests do that on purpose)

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default listen backlog of 5 refuses connections when many open at once

    def serve(port: int) -> ThreadingHTTPServer:
        server = Server(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    servers = [serve(0)]
    port = servers[0].server_address[1]

    def outage(seconds: float) -> None:
        """Stop the server (connections refused) for ``seconds``, then start it again on the same port."""
        def bounce() -> None:
            servers[-1].shutdown()
            servers[-1].server_close()
            with stub.lock:
                for sock in list(stub.sockets):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            time.sleep(seconds)
            servers.append(serve(port))

        threading.Thread(target=bounce, daemon=True).start()

    stub.outage = outage  # type: ignore[attr-defined]
    try:
        yield stub, f"http://127.0.0.1:{port}/v1"
    finally:
        servers[-1].shutdown()
        servers[-1].server_close()
