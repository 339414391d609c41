"""Any OpenAI-compatible endpoint (vLLM, llama-cpp-python's server, OpenAI, ...) via langchain-openai.

The JSON Schema travels in the form the server honours: ``json_schema`` (OpenAI, vLLM) or
``json_object`` with a ``schema`` key (llama-cpp-python). With ``structured="auto"`` the first
form is tried and, if the server rejects it with a 4xx, the second is used from then on for that
endpoint. The API key is read from the environment variable named in the settings and is
never logged or recorded.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import AidsafeError, ModelCallError
from ..replies import without_string_bounds
from .base import ChatModel, Completion, ModelSettings

__all__ = ["OpenAIChatModel"]


def _response_format(mode: str, schema: dict[str, Any], name: str) -> dict[str, Any]:
    if mode == "json_object":  # llama-cpp-python's form; its grammar engine cannot take string bounds
        return {"type": "json_object", "schema": without_string_bounds(schema)}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _rejects_json_schema(exc: Exception) -> bool:
    """Whether an error says the server does not take ``response_format`` ``json_schema``.

    llama-cpp-python's server answers 500 with a validation message; others answer 400 or 422.
    """
    text = str(exc)
    return "response_format" in text or "json_schema" in text


class OpenAIChatModel(ChatModel):
    """langchain-openai's ``ChatOpenAI`` against one endpoint and model."""

    def __init__(self, settings: ModelSettings) -> None:
        try:
            from langchain_openai import ChatOpenAI
        except ImportError:  # pragma: no cover - a core dependency
            raise AidsafeError("the openai backend needs langchain-openai") from None
        if not settings.model:
            raise AidsafeError("the openai backend needs --model (the model name the server serves)")
        self.settings = settings
        self._key = os.environ.get(settings.api_key_env) or None
        # None: not known yet (auto); the first call finds out which form the server takes
        self._mode: str | None = None if settings.structured == "auto" else settings.structured
        options: dict[str, Any] = {
            "model": settings.model,
            "base_url": settings.base_url,
            "api_key": self._key or "EMPTY",
            "max_tokens": settings.max_tokens,
            "timeout": settings.timeout,
            "seed": settings.seed,
        }
        if settings.temperature is not None:
            options["temperature"] = settings.temperature
        self._llm = ChatOpenAI(max_retries=settings.max_retries, **options)
        self._probe = ChatOpenAI(max_retries=0, **options) if self._mode is None else None

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str) -> Completion:
        import openai

        msg = None
        if self._mode is None and self._probe is not None:
            try:
                msg = await self._probe.ainvoke(messages, response_format=_response_format("json_schema", schema, schema_name))
                self._mode = "json_schema"
            except openai.APIStatusError as exc:
                if _rejects_json_schema(exc):
                    self._mode = "json_object"  # e.g. llama-cpp-python's server
            except (openai.APIError, TimeoutError, OSError):
                pass  # transient: the retrying client below takes over
        if msg is None:
            mode = self._mode or "json_schema"
            try:
                msg = await self._llm.ainvoke(messages, response_format=_response_format(mode, schema, schema_name))
            except (openai.APIError, TimeoutError, OSError) as exc:
                raise ModelCallError(_redact(f"{self.label} call failed: {type(exc).__name__}: {exc}", self._key)) from None
        usage = msg.usage_metadata or {}
        content = msg.content if isinstance(msg.content, str) else "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in msg.content
        )
        return Completion(
            text=content,
            prompt_tokens=int(usage.get("input_tokens", 0)),
            completion_tokens=int(usage.get("output_tokens", 0)),
            finish_reason=msg.response_metadata.get("finish_reason"),
        )
