"""The chat models of a compiled graph or a judge: one per distinct settings, created on first use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import ChatModel, ModelSettings
from .cache import CachedChatModel, ResponseCache

__all__ = ["ModelFactory", "ModelPool"]

ModelFactory = Callable[[ModelSettings], ChatModel]


class ModelPool:
    """Models by settings: roles and agents with equal settings share one model (and its connections).

    :meth:`cached` gives a view of the same models that answers requests seen before from a
    :class:`ResponseCache`: a file job runs its graph through such a view, so resuming a killed
    run pays only for the calls it had not made.
    """

    def __init__(self, factory: ModelFactory) -> None:
        self.factory = factory
        self._models: dict[ModelSettings, ChatModel] = {}

    def get(self, settings: ModelSettings) -> ChatModel:
        """The model for ``settings``, built on first use."""
        model = self._models.get(settings)
        if model is None:
            model = self._models[settings] = self.factory(settings)
        return model

    def cached(self, cache: ResponseCache) -> ModelPool:
        """A pool of the same models, each wrapped to answer from ``cache`` first."""
        return ModelPool(lambda settings: CachedChatModel(self.get(settings), cache))

    def endpoint_stats(self) -> dict[str, dict[str, Any]]:
        """The figures of every endpoint the models built so far call (see :meth:`ChatModel.endpoint_stats`)."""
        out: dict[str, dict[str, Any]] = {}
        for model in self._models.values():
            out.update(model.endpoint_stats())
        return out

    def wire_notes(self) -> dict[str, dict[str, Any]]:
        """How requests travel to each server, over every model built so far (see :meth:`ChatModel.wire_notes`)."""
        out: dict[str, dict[str, Any]] = {}
        for model in self._models.values():
            for key, notes in model.wire_notes().items():
                out.setdefault(key, {}).update(notes)
        return out

    async def aclose(self) -> None:
        """Close the connections of every model built so far."""
        for model in self._models.values():
            await model.aclose()
