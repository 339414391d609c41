"""The chat-model interface every backend implements, and the settings that pick a backend."""

from __future__ import annotations

import abc
import os
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .endpoints import Endpoint

__all__ = ["ChatModel", "Completion", "ModelSettings", "StructuredMode", "SystemRole", "merge_system", "rejects_system_role"]

StructuredMode = Literal["auto", "json_schema", "json_object"]
SystemRole = Literal["auto", "native", "merge"]
"""How a role's system text reaches the model: ``native`` as a system message; ``merge`` joined to
the first user turn (for chat templates without a system role: Mixtral-8x7B-Instruct, Gemma);
``auto`` native until the server says its template refuses it, then merged for that endpoint and
model (see :func:`rejects_system_role`)."""

_NO_SYSTEM = re.compile(
    r"roles must alternate|system role(?: is)? not supported|only user and assistant roles"
    r"|system (?:role|message)s? (?:is|are) not (?:supported|allowed)|does not support (?:the )?'?system",
    re.IGNORECASE,
)


def rejects_system_role(text: str) -> bool:
    """Whether an error says the chat template refuses a system message: "Conversation roles must
    alternate user/assistant/user/assistant/..." (Mistral and Mixtral templates, as vLLM and
    llama-cpp-python answer), "System role not supported" (Gemma), and the like."""
    return bool(_NO_SYSTEM.search(text))


def merge_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` without a system message: its text opens the first user turn, followed by a
    blank line (what Gemma's own template does with a system text, and where Llama-2's put it)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    if not system:
        return messages
    rest = [m for m in messages if m["role"] != "system"]
    text = "\n\n".join(system)
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{text}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": text}, *rest]


@dataclass(frozen=True)
class Completion:
    """One model reply."""

    text: str
    """The raw content of the reply (expected to be JSON)."""
    prompt_tokens: int = 0
    """Tokens in the request, as the backend counted them."""
    completion_tokens: int = 0
    """Tokens in the reply, as the backend counted them."""
    finish_reason: str | None = None
    """Why generation stopped (``stop``, ``length``, ...)."""
    retries: int = 0
    """Failed attempts (429, 5xx, timeouts, dropped connections) before this reply."""
    cached: bool = False
    """True when the reply came from the response cache (no model call was made)."""
    logprobs: list[dict[str, Any]] | None = None
    """When asked for and the backend gives them: per token of the reply, ``{"token", "logprob",
    "top": [{"token", "logprob"}]}`` (the most likely alternatives)."""


@dataclass(frozen=True)
class ModelSettings:
    """Which model answers a role, and how to reach it.

    ``api_key_env`` names the environment variable holding the key: the key itself is never
    stored in settings, records or logs.
    """

    backend: str = "local"
    """A registered backend name (:mod:`aidsafe.models.registry`): ``local``, ``openai``, ``fake``."""
    model: str | None = None
    """Model name (openai), GGUF path (local; ``None`` = embedded SmolLM2-135M) or behaviour (fake)."""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float | None = None
    """Sampling temperature; ``None``: 0.2 for the local model, the server's default otherwise."""
    max_tokens: int | None = None
    """Reply budget in tokens; None: each role's own (see :attr:`aidsafe.kinds.ReplyKind.max_tokens`)."""
    timeout: float = 300.0
    max_retries: int = 3
    """Retries of one call after a 5xx, a timeout or a dropped connection (a 429 or 503 is
    backpressure: retried until :attr:`call_deadline`, not counted here)."""
    call_deadline: float = 600.0
    """Seconds one call may spend waiting out 429/503 backpressure (with its retries) before it fails."""
    endpoints: tuple[Endpoint, ...] = ()
    """Several servers of the model (openai backend): calls go to the least loaded one; empty: ``base_url`` alone."""
    max_in_flight: int = 256
    """Most calls in flight to one endpoint; adaptive backoff moves the limit between 1 and this."""
    structured: StructuredMode = "auto"
    """How the JSON Schema is sent: OpenAI ``json_schema``, llama.cpp ``json_object`` + schema, or
    ``json_schema`` first and ``json_object`` only where the server says it does not take ``json_schema``."""
    system_role: SystemRole = "auto"
    """How the system text is sent (:data:`SystemRole`). A role's ``system_role:`` in the graph
    file sets it for that role; ``auto`` leaves it to the endpoint (an endpoints file's
    ``system_role:``), else detects it."""
    n_ctx: int = 8192
    """Context window of a local model (SmolLM2-135M was trained with 8,192 tokens)."""
    prefix_cache_mb: int = 256
    """Memory for the local model's saved prompt prefixes (the KV state of each role's system
    message, computed once and reused by every prompt of the role); 0 turns the reuse off. Not an
    output setting: answers are the same with and without it."""
    seed: int | None = None
    extra: tuple[tuple[str, Any], ...] = field(default=())

    def with_model(self, model: str | None) -> ModelSettings:
        """A copy naming another model on the same backend and endpoint."""
        return replace(self, model=model)

    def sampling(self) -> dict[str, Any]:
        """The settings that change what a model answers (recorded with an output; see
        :meth:`aidsafe.graph.CompiledAidsafe.config`). The endpoint, the key, timeouts, retries and the
        form the schema travels in are not among them."""
        out: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}
        if self.backend == "local":
            out["n_ctx"] = self.n_ctx
        return out

    def label(self) -> str:
        """``backend:model`` as written in records (never the key, never a secret)."""
        if self.backend == "local":
            return f"local:{os.path.basename(self.model) if self.model else 'SmolLM2-135M-Instruct.Q4_1.gguf'}"
        model = self.model or next((e.model for e in self.endpoints if e.model), None)
        return f"{self.backend}:{model or 'default'}"


class ChatModel(abc.ABC):
    """A chat model that answers with JSON following a schema: the interface of every backend."""

    settings: ModelSettings
    default_concurrency: int = 1
    """Prompts in flight when the caller does not say (a local model runs one call at a time)."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings

    @classmethod
    def check(cls, settings: ModelSettings) -> None:
        """Cheap checks of ``settings`` before any model is built or called; raises
        :class:`~aidsafe.errors.AidsafeError` naming what is wrong. The default checks nothing."""
        return None

    @abc.abstractmethod
    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        """Answer ``messages``; the reply should be JSON valid against ``schema``.

        ``options`` may ask for ``logprobs=True``: a backend that can gives them in
        :attr:`Completion.logprobs`; one that cannot answers without them.

        Raises :class:`~aidsafe.errors.ModelCallError` when the call fails after retries.
        """

    @property
    def label(self) -> str:
        return self.settings.label()

    def endpoint_stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint URL this model calls: calls, ok, overloaded (429/503), failed, drained, in
        flight, limit, up (:mod:`aidsafe.models.endpoints`); empty for a backend without endpoints."""
        return {}

    def wire_notes(self) -> dict[str, dict[str, Any]]:
        """How this model's requests travel where that differs by server: ``structured_output`` (per
        endpoint: the ``response_format`` form, and why) and ``system_role`` (per endpoint and model
        whose system text is merged into the user turn, and why). Empty by default."""
        return {}

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""
