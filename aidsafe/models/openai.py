"""Any OpenAI-compatible endpoint (vLLM, llama-cpp-python's server, OpenAI, ...) via langchain-openai.

The JSON Schema travels in the form the server honours: ``json_schema`` (OpenAI, vLLM) or
``json_object`` with a ``schema`` key (llama-cpp-python). With ``structured="auto"`` the first
call tries ``json_schema`` and, if the server rejects it, the endpoint uses ``json_object`` from
then on.

All models on one endpoint share one HTTP connection pool and one adaptive limit; several
endpoints serving one model are routed by :mod:`aidsafe.models.endpoints`. A 429 or 503 is
backpressure, waited out (``Retry-After`` honoured) until the call's deadline; a 5xx, a timeout or a
dropped connection is retried up to ``max_retries`` times; then the call raises
:class:`~aidsafe.errors.ModelCallError`. The API key is read from the environment variable named
in the settings and never appears in errors, logs or records.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..errors import AidsafeError, ModelCallError
from .base import ChatModel, Completion, ModelSettings
from .endpoints import Endpoint, Outcome, Router, router_for
from .limiter import backoff_delay
from .registry import register_backend
from .schema_forms import for_llama_cpp

__all__ = ["OpenAIChatModel"]

_POOLS: dict[tuple[str, int], _Pools] = {}
"""The HTTP pools of each (endpoint, event loop)."""
_NO_LOGPROBS: set[str] = set()
"""Endpoints that refused ``logprobs`` (e.g. a llama-cpp-python server started with ``--logits_all false``): asked without them since."""
_MODES: dict[str, str] = {}
"""The ``response_format`` form each endpoint took (``structured="auto"``), found on its first call
and shared by every model on it (the roles of a graph differ in budget, not in server)."""


def response_format(mode: str, schema: dict[str, Any], name: str) -> dict[str, Any]:
    if mode == "json_object":  # llama-cpp-python's form; its grammar engine cannot take string bounds
        return {"type": "json_object", "schema": for_llama_cpp(schema)}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _rejects_json_schema(exc: Exception) -> bool:
    """Whether an error says the server does not take ``response_format`` ``json_schema``.

    llama-cpp-python's server answers 500 with a validation message; others answer 400 or 422.
    """
    text = str(exc)
    return "response_format" in text or "json_schema" in text


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _logprobs(raw: Any) -> list[dict[str, Any]] | None:
    """OpenAI's ``logprobs.content`` as ``[{"token", "logprob", "top": [{"token", "logprob"}]}]``."""
    content = raw.get("content") if isinstance(raw, dict) else None
    if not isinstance(content, list):
        return None
    return [
        {
            "token": str(item.get("token", "")),
            "logprob": float(item.get("logprob", 0.0)),
            "top": [{"token": str(t.get("token", "")), "logprob": float(t.get("logprob", 0.0))} for t in item.get("top_logprobs") or []],
        }
        for item in content
        if isinstance(item, dict)
    ]


POOL_CONNECTIONS = 32
"""Connections per HTTP pool. An endpoint with a higher limit gets several pools, each call taking
the least busy: httpcore's pool scans all its connections for every request it places, so the
client's CPU per call grows with the connections of one pool (fivefold at 256 in flight, see
bench/README.md, "Several endpoints")."""


class _Pools:
    """The HTTP pools of one endpoint (in one event loop), shared by every model that calls it;
    ``busy`` counts each pool's calls in flight. A pool's client is built when a call first needs
    it (building one costs milliseconds: an SSL context)."""

    def __init__(self, maximum: int) -> None:
        count = max(1, -(-maximum // POOL_CONNECTIONS))
        self.size = min(maximum, POOL_CONNECTIONS)
        self.clients: list[Any] = [None] * count
        self.busy = [0] * count

    def take(self) -> tuple[int, Any]:
        """The first pool with a free connection (calls are packed, so a light load opens few
        connections and pools), else the least busy; its index and client."""
        index = next((i for i, n in enumerate(self.busy) if n < self.size), None)
        if index is None:
            index = self.busy.index(min(self.busy))
        self.busy[index] += 1
        if self.clients[index] is None:
            import httpx

            limits = httpx.Limits(max_connections=self.size, max_keepalive_connections=self.size)
            self.clients[index] = httpx.AsyncClient(limits=limits, timeout=None)
        return index, self.clients[index]

    def give(self, index: int) -> None:
        self.busy[index] -= 1

    @property
    def closed(self) -> bool:
        return any(c is not None and c.is_closed for c in self.clients)

    async def aclose(self) -> None:
        for client in self.clients:
            if client is not None:
                await client.aclose()


def _pools(endpoint: str, maximum: int) -> _Pools:
    key = (endpoint, id(asyncio.get_running_loop()))
    pools = _POOLS.get(key)
    if pools is None or pools.closed:
        pools = _POOLS[key] = _Pools(maximum)
    return pools


@register_backend("openai")
class OpenAIChatModel(ChatModel):
    """langchain-openai's ``ChatOpenAI`` against one endpoint, or several serving the same model
    (:mod:`aidsafe.models.endpoints`)."""

    default_concurrency = 16

    @classmethod
    def check(cls, settings: ModelSettings) -> None:
        if not settings.model and not (settings.endpoints and all(e.model for e in settings.endpoints)):
            raise AidsafeError("the openai backend needs --model (the model name the server serves)")
        if not settings.base_url and not settings.endpoints:
            raise AidsafeError("the openai backend needs --base-url (e.g. http://localhost:8000/v1 for vLLM)")

    def __init__(self, settings: ModelSettings) -> None:
        self.check(settings)
        self.settings = settings
        endpoints = settings.endpoints or (Endpoint(url=settings.base_url or "https://api.openai.com/v1"),)
        self.endpoint = endpoints[0].url
        self._key = os.environ.get(settings.api_key_env) or None
        # None: not known yet (auto); the first call finds out which form the server takes
        self._forced: str | None = None if settings.structured == "auto" else settings.structured
        self.router: Router = router_for(endpoints, settings.max_in_flight)
        self._llms: dict[tuple[str, int], Any] = {}
        self._llm_loop: int | None = None

    def _client(self, endpoint: Endpoint) -> tuple[Any, _Pools, int]:
        """A ``ChatOpenAI`` on the least busy HTTP pool of ``endpoint``; give the pool's index back
        to ``pools.give`` when the call ends."""
        loop = id(asyncio.get_running_loop())
        if self._llm_loop != loop:
            self._llms, self._llm_loop = {}, loop
        s = self.settings
        pools = _pools(endpoint.url, endpoint.max_in_flight or s.max_in_flight)
        index, client = pools.take()
        llm = self._llms.get((endpoint.url, index))
        if llm is None:
            from langchain_openai import ChatOpenAI

            options: dict[str, Any] = {
                "model": endpoint.model or s.model,
                "base_url": endpoint.url,
                "api_key": self._key or "EMPTY",
                "max_tokens": s.max_tokens,
                "timeout": s.timeout,
                "seed": s.seed,
                "max_retries": 0,  # retries are ours: they must feed the adaptive limits
                "http_async_client": client,
            }
            if s.temperature is not None:
                options["temperature"] = s.temperature
            llm = self._llms[(endpoint.url, index)] = ChatOpenAI(**options)
        return llm, pools, index

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        """One reply. A 429 or 503 is backpressure: waited out (``Retry-After`` honoured) and retried
        until ``call_deadline``, not counted against ``max_retries``; a timeout, another 5xx or a
        dropped connection is retried up to ``max_retries`` times, elsewhere when an endpoint dies."""
        import openai

        started = time.monotonic()
        counted = tries = backpressure = 0
        msg: Any = None
        mode = ""
        want_logprobs = bool(options.get("logprobs"))
        while True:
            tries += 1
            slot = await self.router.acquire()
            url = slot.endpoint.url
            mode = self._forced or _MODES.get(url) or "json_schema"
            outcome: Outcome = "neutral"
            delay = 0.0
            problem: Exception | None = None
            extra = {"logprobs": True, "top_logprobs": 5} if want_logprobs and url not in _NO_LOGPROBS else {}
            try:
                # response_format travels in extra_body: as a typed parameter the openai client would walk
                # the whole JSON Schema on every call (a fifth of the client's CPU) and parse the reply twice
                llm, pools, index = self._client(slot.endpoint)
                try:
                    msg = await llm.ainvoke(messages, extra_body={"response_format": response_format(mode, schema, schema_name)}, **extra)
                finally:
                    pools.give(index)
                outcome = "ok"
            except openai.APIStatusError as exc:
                if self._forced is None and url not in _MODES and _rejects_json_schema(exc):
                    _MODES[url] = "json_object"  # e.g. llama-cpp-python's server; not a failure of the call
                    tries -= 1
                    continue
                if extra and "logprobs" in str(exc):
                    _NO_LOGPROBS.add(url)  # the server cannot give them: ask without, not a failure
                    tries -= 1
                    continue
                if exc.status_code in (429, 503):
                    outcome, problem = "overloaded", exc
                elif exc.status_code >= 500 or exc.status_code == 408:
                    outcome, problem = "failed", exc
                else:
                    raise self._error(exc, tries) from None
            except openai.APIConnectionError as exc:
                # refused or dropped: the endpoint looks dead (a timeout is a subclass: slow, not dead)
                outcome, problem = ("failed" if isinstance(exc, openai.APITimeoutError) else "down"), exc
            except (asyncio.TimeoutError, OSError) as exc:
                outcome, problem = "failed", exc
            finally:
                rerouted = await self.router.release(slot, outcome)
            if outcome == "ok":
                break
            assert problem is not None
            if outcome == "overloaded":
                backpressure += 1
                delay = backoff_delay(backpressure, _retry_after(problem))
            elif not rerouted:
                counted += 1
                if counted > self.settings.max_retries:
                    raise self._error(problem, tries) from None
                delay = backoff_delay(counted, None)
            if time.monotonic() + delay - started > self.settings.call_deadline:
                raise self._error(problem, tries, deadline=True) from None
            await asyncio.sleep(delay)
        if self._forced is None:
            _MODES.setdefault(url, mode)
        assert msg is not None  # the loop only breaks after a successful call
        usage = msg.usage_metadata or {}
        content = msg.content if isinstance(msg.content, str) else "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in msg.content
        )
        return Completion(
            text=content,
            prompt_tokens=int(usage.get("input_tokens", 0)),
            completion_tokens=int(usage.get("output_tokens", 0)),
            finish_reason=msg.response_metadata.get("finish_reason"),
            retries=tries - 1,
            logprobs=_logprobs(msg.response_metadata.get("logprobs")) if want_logprobs else None,
        )

    def endpoint_stats(self) -> dict[str, dict[str, Any]]:
        return self.router.stats()

    def _error(self, exc: Exception, attempts: int, *, deadline: bool = False) -> ModelCallError:
        detail = f"{type(exc).__name__}: {exc}"
        why = f" and the call deadline of {self.settings.call_deadline:g} s" if deadline else ""
        return ModelCallError(_redact(f"{self.label} call failed after {attempts} attempt(s){why}: {detail}", self._key))

    async def aclose(self) -> None:
        loop = id(asyncio.get_running_loop())
        for state in self.router.states:
            pools = _POOLS.pop((state.endpoint.url, loop), None)
            if pools is not None:
                await pools.aclose()
        self._llms = {}
