"""The backend registry: a backend name (``--backend``) maps to a chat-model class.

A backend class registers itself with :func:`register_backend` and declares its own settings
check (:meth:`~aidsafe.models.base.ChatModel.check`, cheap, before any model is built) and its
default number of prompts in flight (:attr:`~aidsafe.models.base.ChatModel.default_concurrency`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import AidsafeError
from .base import ChatModel, ModelSettings

__all__ = [
    "backend_class",
    "backend_names",
    "check_settings",
    "default_concurrency",
    "make_model",
    "register_backend",
    "unregister_backend",
]

C = TypeVar("C", bound=type[ChatModel])

_BACKENDS: dict[str, type[ChatModel]] = {}


def register_backend(name: str) -> Callable[[C], C]:
    """Class decorator: make ``cls`` the backend called ``name``."""

    def register(cls: C) -> C:
        _BACKENDS[name] = cls
        return cls

    return register


def unregister_backend(name: str) -> None:
    """Remove a registered backend (tests use it to clean up after themselves)."""
    _BACKENDS.pop(name, None)


def backend_names() -> list[str]:
    """Registered backend names, in registration order."""
    return list(_BACKENDS)


def backend_class(name: str) -> type[ChatModel]:
    """The class of backend ``name``; :class:`AidsafeError` listing the backends if unknown."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise AidsafeError(f"unknown backend {name!r}; choose {', '.join(backend_names())}") from None


def make_model(settings: ModelSettings) -> ChatModel:
    """Build the chat model for ``settings.backend``."""
    return backend_class(settings.backend)(settings)


def check_settings(settings: ModelSettings) -> None:
    """Cheap checks before any model is built or called; raises :class:`~aidsafe.errors.AidsafeError`."""
    backend_class(settings.backend).check(settings)


def default_concurrency(settings: ModelSettings) -> int:
    """Prompts in flight when the caller does not say: what the backend serves well."""
    return backend_class(settings.backend).default_concurrency
