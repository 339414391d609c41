"""Chat-model backends, chosen by name from a registry: ``local`` (llama-cpp-python), ``openai``
(any OpenAI-compatible server), ``fake`` (scripted, for tests); plus the model pool and the
response cache that wraps any of them."""

from __future__ import annotations

from .base import ChatModel, Completion, ModelSettings, StructuredMode, SystemRole
from .cache import CachedChatModel, ResponseCache, request_key
from .fake import BEHAVIOURS, FakeChatModel
from .local import LocalChatModel
from .openai import OpenAIChatModel
from .pool import ModelFactory, ModelPool
from .registry import (
    backend_class,
    backend_names,
    check_settings,
    default_concurrency,
    make_model,
    register_backend,
    unregister_backend,
)

__all__ = [
    "BEHAVIOURS",
    "CachedChatModel",
    "ChatModel",
    "Completion",
    "FakeChatModel",
    "LocalChatModel",
    "ModelFactory",
    "ModelPool",
    "ModelSettings",
    "OpenAIChatModel",
    "ResponseCache",
    "StructuredMode",
    "SystemRole",
    "backend_class",
    "backend_names",
    "check_settings",
    "default_concurrency",
    "make_model",
    "register_backend",
    "request_key",
    "unregister_backend",
]
