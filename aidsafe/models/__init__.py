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
    "check_settings",
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


def check_settings(settings: ModelSettings) -> None:
    """Cheap checks before any model is built or called; raises :class:`~aidsafe.errors.AidsafeError`."""
    from pathlib import Path

    from ..errors import AidsafeError

    if settings.backend == "fake" and (settings.model or "default") not in BEHAVIOURS:
        raise AidsafeError(f"unknown fake behaviour {settings.model!r}; choose one of {', '.join(BEHAVIOURS)}")
    if settings.backend == "openai" and not settings.model:
        raise AidsafeError("the openai backend needs --model (the model name the server serves)")
    if settings.backend == "openai" and not settings.base_url:
        raise AidsafeError("the openai backend needs --base-url (e.g. http://localhost:8000/v1 for vLLM)")
    if settings.backend == "local":
        if settings.model and not Path(settings.model).expanduser().is_file():
            raise AidsafeError(f"GGUF model file not found: {settings.model}")
        if not settings.model:
            from .local import default_gguf_path

            default_gguf_path()  # raises with the install hint when the embedded model is missing
    if settings.backend not in ("fake", "openai", "local"):
        raise AidsafeError(f"unknown backend {settings.backend!r}; choose local, openai or fake")
