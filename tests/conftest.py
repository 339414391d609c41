"""Shared fixtures. Tests never reach the network: the fake model answers unless a test opts in."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.testing import SimServer, TemplateRaised, render_chat_template

__all__ = ["MIXTRAL_CHAT_TEMPLATE", "Stub", "TemplateRaised", "missing_modules", "render_chat_template", "require_extras", "running_stub"]

Responder = Callable[[list[dict[str, str]], str, dict[str, Any]], str]


@pytest.fixture(autouse=True)
def _prefix_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local model's saved prompt prefixes go to a new folder for every test, never to the
    user's ~/.cache: a test's counts of computed and restored prefixes are its own."""
    monkeypatch.setenv("AIDSAFE_PREFIX_DIR", str(tmp_path_factory.mktemp("prefixes")))


def write_prompts(path: Path, n: int) -> Path:
    """A prompts file of ``n`` numbered prompts (ids ``p000``, ``p001``, ...)."""
    path.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": f"prompt number {i}"}) + "\n" for i in range(n)))
    return path


KEPT_ENV = ("AIDSAFE_REQUIRE_E2E", "AIDSAFE_PREFIX_DIR")
"""The suite's own variables, which :func:`clean_env` keeps."""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AIDSAFE_* variable of the calling shell changes what a test sees (a module uses it with
    ``pytestmark = pytest.mark.usefixtures("clean_env")``)."""
    for name in list(os.environ):
        if name.startswith("AIDSAFE_") and name not in KEPT_ENV:
            monkeypatch.delenv(name)


@pytest.fixture
def fake_pipeline() -> Callable[..., Pipeline]:
    """Build a pipeline whose every model is a fake (a behaviour name, or a scripted responder)."""

    def build(graph: str | Path = "aidsafe", policies: str | Path = "aidsafe5", behaviour: str = "default",
              responder: Responder | None = None, role_models: dict[str, str] | None = None) -> Pipeline:
        def factory(settings: ModelSettings) -> FakeChatModel:
            return FakeChatModel(settings, responder=responder)

        return Pipeline(graph, policies, ModelSettings(backend="fake", model=behaviour), role_models=role_models, model_factory=factory)

    return build



Stub = SimServer
"""The scripted OpenAI-compatible test server: :class:`aidsafe.testing.SimServer` (mutable by tests while it runs)."""

MIXTRAL_CHAT_TEMPLATE = (Path(__file__).parent / "data" / "mixtral_chat_template.jinja").read_text(encoding="utf-8")
"""Mixtral-8x7B-Instruct-v0.1's chat template (its ``tokenizer_config.json``): no system role."""


@pytest.fixture
def stub_server() -> Iterator[tuple[Stub, str]]:
    """A real HTTP server on localhost speaking the OpenAI chat-completions format, scripted by ``Stub``."""
    with running_stub() as served:
        yield served


@pytest.fixture
def stub_servers() -> Iterator[list[tuple[Stub, str]]]:
    """Three such servers, each with its own script: replicas of one model."""
    with running_stub() as a, running_stub() as b, running_stub() as c:
        yield [a, b, c]


@contextlib.contextmanager
def running_stub() -> Iterator[tuple[Stub, str]]:
    """One scripted server on a free localhost port, for as long as the ``with`` block runs: model ``m``,
    ``owned_by`` ``stub``, 11 prompt and 7 completion tokens a reply."""
    with SimServer(model="m", owned_by="stub", usage=(11, 7)) as stub:
        yield stub, stub.url


# -- tests that need an optional extra (or a real model) ----------------------------------------

REQUIRE_E2E = "AIDSAFE_REQUIRE_E2E"
"""Set (``.ci/run`` sets it), a test whose extra is missing fails instead of skipping."""


def missing_modules(*modules: str) -> list[str]:
    """The ones of ``modules`` that cannot be imported here (nothing is imported to find out)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_extras(*modules: str, extra: str, missing: tuple[str, ...] | list[str] = ()) -> None:
    """The one place that decides whether a test needing an optional extra may skip.

    Nothing happens when every one of ``modules`` can be imported and ``missing`` (other things the
    test lacks, described, e.g. a browser binary) is empty. Otherwise the caller is skipped — the
    test or fixture it is called from, or the whole module when called at module level — unless
    ``AIDSAFE_REQUIRE_E2E`` is set: then it fails, naming what is missing. ``extra`` says what to
    install (``"the [train] extra"``). On a test, the marker ``@pytest.mark.requires_extras(*modules,
    extra=...)`` calls it before the test runs."""
    lacking = [*missing_modules(*modules), *missing]
    if not lacking:
        return
    if os.environ.get(REQUIRE_E2E):
        pytest.fail(f"{REQUIRE_E2E} is set but {extra} is not installed (missing: {', '.join(lacking)})", pytrace=False)
    pytest.skip(f"needs {extra} (missing: {', '.join(lacking)})", allow_module_level=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_extras(*modules, extra): skip unless the modules import; fail instead with AIDSAFE_REQUIRE_E2E set")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_extras"):
        require_extras(*mark.args, **mark.kwargs)
