"""Any OpenAI-compatible endpoint (vLLM, llama-cpp-python's server, OpenAI, ...) via langchain-openai.

The JSON Schema travels in the form the server honours: ``json_schema`` (OpenAI, vLLM) or
``json_object`` with a ``schema`` key (llama-cpp-python). With ``structured="auto"`` calls send
``json_schema``; an endpoint switches to ``json_object`` only when the server says it does not take
``json_schema`` (a 4xx naming it, or llama-cpp-python's request-validation reply "Input should be
'text' or 'json_object'"), never on a 5xx or a timeout (those are retried), and never on a vLLM
server (it serves ``json_object`` without the schema: the call fails with what to do instead).
Every change is logged once and reported by :meth:`OpenAIChatModel.wire_notes`.

The system text travels as a system message unless the role or the endpoint says ``merge``
(:data:`~aidsafe.models.base.SystemRole`); with ``auto``, a server whose chat template refuses a
system role (:func:`~aidsafe.models.base.rejects_system_role`) gets that call again with the system
text merged into the first user turn, and every later call to that endpoint and model merged.

All models on one endpoint share one HTTP connection pool and one adaptive limit; several
endpoints serving one model are routed by :mod:`aidsafe.models.endpoints`. A 429 or 503 is
backpressure, waited out (``Retry-After`` honoured) until the call's deadline, and so is a timeout
while the endpoint answers other calls at queueing latencies (a server that queues, as vLLM does
beyond ``--max-num-seqs``: the endpoint's limit is cut, see :mod:`aidsafe.models.endpoints`); a
5xx, another timeout or a dropped connection is retried up to ``max_retries`` times; then the call raises
:class:`~aidsafe.errors.ModelCallError`. The API key is read from the environment variable named
in the settings and never appears in errors, logs or records.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import weakref
from typing import Any

from ..errors import AidsafeError, ModelCallError
from .base import ChatModel, Completion, ModelSettings, merge_system, rejects_system_role
from .endpoints import Endpoint, Outcome, Router, router_for
from .limiter import backoff_delay
from .registry import register_backend
from .schema_forms import for_llama_cpp

__all__ = ["OpenAIChatModel"]

_log = logging.getLogger("aidsafe.models")
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Pools]] = weakref.WeakKeyDictionary()
"""The HTTP pools of each event loop, by endpoint; a loop's pools go with the loop."""
_NO_LOGPROBS: set[str] = set()
"""Endpoints that refused ``logprobs`` (e.g. a llama-cpp-python server started with ``--logits_all false``): asked without them since."""
_MODES: dict[str, dict[str, str]] = {}
"""The ``response_format`` form each endpoint takes under ``structured="auto"`` (shared by every model
on it: the roles of a graph differ in budget, not in server): ``{"mode", "source", "reason"}``."""
_MERGED: dict[tuple[str, str], str] = {}
"""(endpoint, model) whose chat template refused a system message: what the server said."""
_VLLM: dict[str, bool] = {}
"""Endpoints known to be (or not to be) vLLM servers (``owned_by: vllm`` in ``GET /models``)."""

_LLAMA_CPP_VALIDATION = "Input should be 'text' or 'json_object'"
"""llama-cpp-python's server, given ``json_schema``: a request-validation error it answers with 500."""


def response_format(mode: str, schema: dict[str, Any], name: str) -> dict[str, Any]:
    if mode == "json_object":  # llama-cpp-python's form; its grammar engine cannot take string bounds
        return {"type": "json_object", "schema": for_llama_cpp(schema)}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _message(exc: Exception) -> str:
    """The server's own error message (``{"error": {"message": ...}}``), else the exception's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(exc)


_UNSUPPORTED = re.compile(r"json_schema[^.\n]{0,80}?\b(?:is )?(?:not supported|unsupported|not (?:a )?(?:valid|permitted|allowed))"
                          r"|(?:not supported|unsupported|does not support|doesn't support)[^.\n]{0,80}?json_schema", re.IGNORECASE)


def _rejects_json_schema(exc: Any) -> bool:
    """Whether an error says the server does not take ``response_format`` ``json_schema`` at all:
    llama-cpp-python's request-validation reply (which it sends with status 500), or a 4xx saying
    ``json_schema`` is not supported. A 4xx about the schema itself ("Invalid schema for
    response_format ...", a feature the grammar backend lacks) is not: the schema must be fixed,
    and ``json_object`` would only hide the problem. Any other 5xx is the server failing, not
    refusing (e.g. a grammar that took too long to compile): retried."""
    text = str(exc)
    status = getattr(exc, "status_code", 0)
    if _LLAMA_CPP_VALIDATION in text:
        return True
    return 400 <= status < 500 and status not in (408, 429) and "invalid schema" not in text.lower() and bool(_UNSUPPORTED.search(text))


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
    it (building one costs milliseconds: an SSL context). ``users`` are the models that called
    through them: the pools close when the last of them closes, so closing one pipeline leaves
    another's connections alone."""

    def __init__(self, maximum: int) -> None:
        count = max(1, -(-maximum // POOL_CONNECTIONS))
        self.size = min(maximum, POOL_CONNECTIONS)
        self.clients: list[Any] = [None] * count
        self.busy = [0] * count
        self.users: set[int] = set()

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
    loop = asyncio.get_running_loop()
    by_url = _POOLS.get(loop)
    if by_url is None:
        by_url = _POOLS[loop] = {}
        for old in [other for other in list(_POOLS.keys()) if other.is_closed()]:
            _POOLS.pop(old, None)  # a finished asyncio.run: its connections cannot be used again
    pools = by_url.get(endpoint)
    if pools is None or pools.closed:
        pools = by_url[endpoint] = _Pools(maximum)
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
        self._llms: dict[tuple[str, int], tuple[Any, Any]] = {}
        """(endpoint, pool index) -> (its HTTP client, the ``ChatOpenAI`` on it), in the current event loop."""
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
        cached = self._llms.get((endpoint.url, index))
        llm = cached[1] if cached is not None and cached[0] is client else None
        if llm is None:  # first use, or the pools were replaced (closed by their last other user)
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
            llm = ChatOpenAI(**options)
            self._llms[(endpoint.url, index)] = (client, llm)
            pools.users.add(id(self))
        return llm, pools, index

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        """One reply. A 429 or 503 is backpressure: waited out (``Retry-After`` honoured) and retried
        until ``call_deadline``, not counted against ``max_retries``, and so is a timeout while the
        endpoint answers other calls (the call waited in its queue); a timeout with no other reply
        meanwhile, another 5xx or a dropped connection is retried up to ``max_retries`` times,
        elsewhere when an endpoint dies."""
        import openai

        started = time.monotonic()
        counted = tries = backpressure = 0
        msg: Any = None
        mode = ""
        want_logprobs = bool(options.get("logprobs"))
        while True:
            tries += 1
            slot = await self.router.acquire()
            sent = time.monotonic()
            url = slot.endpoint.url
            mode = self._forced or _MODES.get(url, {}).get("mode", "json_schema")
            model = slot.endpoint.model or self.settings.model or ""
            merged = self._system_role(slot.endpoint, model) == "merge"
            outcome: Outcome = "neutral"
            delay = 0.0
            problem: Exception | None = None
            extra = {"logprobs": True, "top_logprobs": 5} if want_logprobs and url not in _NO_LOGPROBS else {}
            try:
                # response_format travels in extra_body: as a typed parameter the openai client would walk
                # the whole JSON Schema on every call (a fifth of the client's CPU) and parse the reply twice
                llm, pools, index = self._client(slot.endpoint)
                try:
                    msg = await llm.ainvoke(merge_system(messages) if merged else messages, extra_body=self._body(mode, schema, schema_name), **extra)
                finally:
                    pools.give(index)
                outcome = "ok"
            except openai.APIStatusError as exc:
                if rejects_system_role(str(exc)):  # the chat template's answer: the same on every retry
                    if merged or self._set_role(slot.endpoint) == "native":
                        raise self._template_error(exc, model, merged) from None
                    self._note_merge(url, model, exc)  # this call again, merged: not a failure of the call
                    tries -= 1
                    continue
                if self._forced is None and mode == "json_schema" and _rejects_json_schema(exc):
                    await self._fall_back(slot.endpoint, exc)  # raises where the fallback would lose the schema
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
                outcome, problem = ("timeout" if isinstance(exc, openai.APITimeoutError) else "down"), exc
            except (asyncio.TimeoutError, OSError) as exc:
                outcome, problem = "failed", exc
            finally:
                tokens = (msg.usage_metadata or {}).get("output_tokens", 0) if outcome == "ok" else 0
                rerouted = await self.router.release(slot, outcome, time.monotonic() - sent, tokens)
            if outcome == "ok":
                break
            assert problem is not None
            if outcome == "overloaded":
                backpressure += 1
                delay = backoff_delay(backpressure, _retry_after(problem))
            elif outcome == "timeout" and self.router.queueing(slot, sent):
                # it waited in the queue of a server that answers other calls: overload, not failure. Not
                # counted (the call deadline bounds it); sent again as soon as the limit, cut meanwhile, lets it
                pass
            elif not rerouted:
                counted += 1
                if counted > self.settings.max_retries:
                    raise self._error(problem, tries) from None
                delay = backoff_delay(counted, None)
            if time.monotonic() + delay - started > self.settings.call_deadline:
                raise self._error(problem, tries, deadline=True) from None
            await asyncio.sleep(delay)
        if self._forced is None and url not in _MODES:
            _MODES[url] = {"mode": mode, "source": "auto"}
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

    def _body(self, mode: str, schema: dict[str, Any], name: str) -> dict[str, Any]:
        """What travels beside the messages: the response format, and for ``json_object`` servers
        (llama-cpp-python's) the reply budget as ``max_tokens`` too: langchain-openai sends it as
        ``max_completion_tokens`` alone, which llama-cpp-python's server does not read (0.3.36), so
        replies there had no budget. vLLM reads both (``max_completion_tokens`` first)."""
        body: dict[str, Any] = {"response_format": response_format(mode, schema, name)}
        if mode == "json_object" and self.settings.max_tokens is not None:
            body["max_tokens"] = self.settings.max_tokens
        return body

    def _set_role(self, endpoint: Endpoint) -> str | None:
        """``native`` or ``merge`` as set: the role's or the run's, else the endpoint's; None: ``auto``."""
        if self.settings.system_role != "auto":
            return self.settings.system_role
        return endpoint.system_role

    def _system_role(self, endpoint: Endpoint, model: str) -> str:
        """``native`` or ``merge`` as set (:meth:`_set_role`), else ``merge`` where detected, else ``auto``."""
        return self._set_role(endpoint) or ("merge" if (endpoint.url, model) in _MERGED else "auto")

    def _note_merge(self, url: str, model: str, exc: Exception) -> None:
        if (url, model) not in _MERGED:
            _MERGED[(url, model)] = _redact(_message(exc), self._key)[:300]
            _log.warning("aidsafe: %s (%s) refuses a system message (%s): its system text now joins the first user turn "
                         "(set system_role: merge for it to skip this detection)", url, model, _MERGED[(url, model)])

    def _template_error(self, exc: Exception, model: str, merged: bool) -> ModelCallError:
        what = ("even with the system text merged into the first user turn" if merged
                else "and system_role is set to native for it")
        return ModelCallError(_redact(
            f"{self.label}: the chat template of {model or 'the model'} rejects aidsafe's messages {what}: {_message(exc)}. "
            "Serve the model with a chat template that takes user/assistant turns (vLLM: --chat-template FILE), "
            "or set system_role (auto or merge) for it", self._key))

    async def _fall_back(self, endpoint: Endpoint, exc: Exception) -> None:
        """Send ``json_object`` + schema to ``endpoint`` from now on, as the server asked: logged once,
        reported in :meth:`wire_notes`. Refused (:class:`ModelCallError`) on a vLLM server, which serves
        ``json_object`` without the schema: the user must ask for that with ``--structured-output json_object``."""
        url = endpoint.url
        if _MODES.get(url, {}).get("mode") == "json_object":
            return  # another call switched it meanwhile
        why = " ".join(_redact(_message(exc), self._key).split())[:300]
        vllm = await self._is_vllm(endpoint)
        if vllm is None:  # fail closed: this call fails, a later one asks again
            raise ModelCallError(
                f"{self.label}: {url} refused the json_schema response format ({why}), and whether it is a vLLM server (which "
                "serves json_object without the schema) could not be read from GET /models; not falling back to json_object. "
                "Pass --structured-output json_object to send it anyway."
            )
        if vllm:
            raise ModelCallError(
                f"{self.label}: the vLLM server at {url} refused the json_schema response format ({why}). aidsafe does not "
                "fall back to json_object there: vLLM serves json_object without the schema, so replies would be unconstrained. "
                "Fix what the server rejects, or pass --structured-output json_object to accept unconstrained JSON."
            )
        if _MODES.get(url, {}).get("mode") == "json_object":
            return  # another call switched it while this one asked GET /models: said once
        _MODES[url] = {"mode": "json_object", "source": "fallback", "reason": why}
        _log.warning("aidsafe: %s does not take response_format json_schema (%s): json_object with the schema from now on", url, why)

    async def _is_vllm(self, endpoint: Endpoint) -> bool | None:
        """Whether ``GET {url}/models`` lists a model ``owned_by: vllm``; None when that cannot be read
        (not remembered: asked again next time)."""
        url = endpoint.url
        if url not in _VLLM:
            pools = _pools(url, endpoint.max_in_flight or self.settings.max_in_flight)
            index, client = pools.take()
            try:
                headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
                response = await client.get(url.rstrip("/") + "/models", headers=headers, timeout=10.0)
                models = response.json().get("data") if response.status_code == 200 else None
                if not isinstance(models, list):
                    return None
                _VLLM[url] = any(isinstance(m, dict) and m.get("owned_by") == "vllm" for m in models)
            except Exception:  # no answer: unknown
                return None
            finally:
                pools.give(index)
        return _VLLM[url]

    def wire_notes(self) -> dict[str, dict[str, Any]]:
        structured: dict[str, Any] = {}
        system: dict[str, Any] = {}
        for state in self.router.states:
            url, model = state.endpoint.url, state.endpoint.model or self.settings.model or ""
            if self._forced is not None:
                structured[url] = {"mode": self._forced, "source": "--structured-output"}
            elif url in _MODES:
                structured[url] = dict(_MODES[url])
            role = self._system_role(state.endpoint, model)
            if role == "merge":
                source = ("role or --system-role" if self.settings.system_role == "merge"
                          else "endpoints file" if state.endpoint.system_role == "merge" else "detected")
                system[f"{url} {model}"] = {"mode": "merge", "source": source, **({"reason": _MERGED[(url, model)]} if source == "detected" else {})}
        return {"structured_output": structured, "system_role": system}

    def _error(self, exc: Exception, attempts: int, *, deadline: bool = False) -> ModelCallError:
        detail = f"{type(exc).__name__}: {exc}"
        why = f" and the call deadline of {self.settings.call_deadline:g} s" if deadline else ""
        return ModelCallError(_redact(f"{self.label} call failed after {attempts} attempt(s){why}: {detail}", self._key))

    async def aclose(self) -> None:
        """Let go of this loop's HTTP pools; the last model using an endpoint's pools closes them."""
        by_url = _POOLS.get(asyncio.get_running_loop(), {})
        for state in self.router.states:
            pools = by_url.get(state.endpoint.url)
            if pools is not None:
                pools.users.discard(id(self))
                if not pools.users:
                    del by_url[state.endpoint.url]
                    await pools.aclose()
        self._llms = {}
