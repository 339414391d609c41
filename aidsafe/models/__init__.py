"""Chat-model backends: ``local`` (llama-cpp-python), ``openai`` (any OpenAI-compatible server), ``fake``."""

from __future__ import annotations

from .base import Backend, ChatModel, Completion, ModelSettings, StructuredMode
from .fake import BEHAVIOURS, FakeChatModel

__all__ = [
    "Backend",
    "ChatModel",
    "Completion",
    "FakeChatModel",
    "ModelSettings",
    "StructuredMode",
    "BEHAVIOURS",
    "make_model",
]


def make_model(settings: ModelSettings) -> ChatModel:
    """Build the chat model for ``settings.backend``."""
    if settings.backend == "fake":
        return FakeChatModel(settings)
    if settings.backend == "local":
        from .local import LocalChatModel

        return LocalChatModel(settings)
    if settings.backend == "openai":
        from .openai import OpenAIChatModel

        return OpenAIChatModel(settings)
    raise ValueError(f"unknown backend {settings.backend!r}; choose local, openai or fake")
