"""Shared fixtures. Tests never reach the network: the fake model answers unless a test opts in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aidsafe import FakeChatModel, ModelSettings, Pipeline

Responder = Callable[[list[dict[str, str]], str, dict[str, Any]], str]


@pytest.fixture
def fake_pipeline() -> Callable[..., Pipeline]:
    """Build a pipeline whose every model is a fake (a behaviour name, or a scripted responder)."""

    def build(graph: str | Path = "aidsafe", policies: str | Path = "aidsafe5", behaviour: str = "default",
              responder: Responder | None = None, role_models: dict[str, str] | None = None) -> Pipeline:
        def factory(settings: ModelSettings) -> FakeChatModel:
            return FakeChatModel(settings, responder=responder)

        return Pipeline(graph, policies, ModelSettings(backend="fake", model=behaviour), role_models=role_models, model_factory=factory)

    return build

