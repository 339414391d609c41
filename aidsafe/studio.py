"""Serve the shipped graphs with LangGraph's own tooling: ``langgraph dev``, LangGraph Studio and
the LangGraph SDK.

``langgraph.json`` at the root of the repository maps every shipped graph to a factory here
(``"aidsafe": "aidsafe.studio:aidsafe"``, ...). The LangGraph API server calls a factory with the
run's ``RunnableConfig`` whenever it needs the graph (to run it, to read a thread's state, to
draw it or show its schemas); the factory compiles the graph file with the policy pack and the
model settings read from the run's ``configurable`` (or ``context``) keys:

============== =================================================================================
key            meaning (default: the ``AIDSAFE_<KEY>`` environment variable the CLI reads, else)
============== =================================================================================
policies       shipped policy pack (``aidsafe5``, ``llamaguard3``) or a pack file path (aidsafe5)
backend        ``local``, ``openai`` or ``fake`` (openai when a base_url is set, else local)
model          model name (openai), GGUF path (local) or fake behaviour
base_url       OpenAI-compatible endpoint, e.g. ``http://localhost:8000/v1``
temperature    sampling temperature
max_tokens     max tokens per reply, for every role
seed           sampling seed
role_models    ``{"role or agent": "model"}``, like ``--role-model ROLE=MODEL``
============== =================================================================================

``api_key_env``, ``timeout``, ``max_retries``, ``structured_output``, ``system_role``, ``n_ctx`` and ``prefix_cache`` come from
the environment only (``AIDSAFE_API_KEY_ENV``, ...), as for the CLI; a run cannot pick which
environment variable is sent as the API key.

A run's input is the graph's state; ``{"prompt": "..."}`` is enough (add ``"id"`` to get it back
in the state). The final state is what :func:`aidsafe.pipeline.record_from_state` turns into the
same record ``aidsafe generate`` writes for that prompt.

The graph a factory returns is the compiled LangGraph of :func:`~aidsafe.graph.compile_graph`
with two things bound, without changing what the compiler gives the CLI: its recursion limit,
and a run context the server can build (the server turns ``configurable``/``context`` into the
graph's context object; the CLI's :class:`~aidsafe.graph.GraphContext` holds live models, which
no JSON payload can carry).

To serve a graph file of your own, add a module with ``my_graph = graph_factory("my_graph.yaml")``
and point ``langgraph.json`` at it.
"""

from __future__ import annotations

import asyncio
import os
import typing
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, cast

import typing_extensions
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from pydantic import ConfigDict, Field, TypeAdapter

from .errors import AidsafeError, ConfigError
from .graph.compiler import CompiledAidsafe, compile_graph
from .graph.state import PromptState
from .models import ChatModel, ModelPool, ModelSettings, StructuredMode, SystemRole, backend_names, make_model

__all__ = [
    "SHIPPED_GRAPHS",
    "StudioConfigError",
    "StudioInput",
    "StudioSettings",
    "aidsafe",
    "compile_for_studio",
    "ear_whisperer",
    "graph_factory",
    "init_only",
    "roundtable",
    "settings_from_config",
    "single",
    "studio_graph",
]

GraphFactory = Callable[[RunnableConfig], AbstractAsyncContextManager[Any]]

SHIPPED_GRAPHS = ("aidsafe", "ear_whisperer", "init_only", "roundtable", "single")
"""The graphs under ``graphs/``, each served by the factory of the same name in this module."""


class StudioConfigError(ConfigError, ValueError):
    """A :class:`~aidsafe.errors.ConfigError` of a served graph. It is a ``ValueError`` too, because
    the LangGraph API server reports the message of a ``ValueError`` with a failed run and replaces
    the messages of exceptions it does not know by "An internal error occurred"."""


class StudioInput(typing_extensions.TypedDict):
    """What a run of a served graph takes: a prompt (the rest of the state starts empty)."""

    prompt: Annotated[str, Field(description="the user prompt")]
    id: typing_extensions.NotRequired[Annotated[str, Field(description="an id, kept in the state and the record")]]


# PromptState as a typing_extensions TypedDict: pydantic builds no schema from a typing.TypedDict
# before Python 3.12, so the server could show no output schema of the graphs
_STATE_SCHEMA: Any = cast(Any, typing_extensions.TypedDict)(
    "PromptState", typing.get_type_hints(PromptState, include_extras=True), total=False
)


def _about(text: str) -> Any:
    return Field(description=text)


@dataclass(frozen=True)
class StudioSettings:
    """Policy pack and model settings of a run (unset: the ``AIDSAFE_*`` environment variable, else the CLI's default).

    The context schema of the served graphs: LangGraph Studio shows these fields as the assistant's
    configuration, and a run may set them as ``configurable`` or ``context`` keys.
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(title="aidsafe settings")

    policies: Annotated[str | None, _about("shipped policy pack (aidsafe5, llamaguard3) or a pack file path; default aidsafe5")] = None
    backend: Annotated[str | None, _about("model backend: local, openai or fake; default openai when base_url is set, else local")] = None
    model: Annotated[str | None, _about("model name (openai), GGUF path (local; default: the embedded SmolLM2-135M) or fake behaviour")] = None
    base_url: Annotated[str | None, _about("OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM)")] = None
    temperature: Annotated[float | None, _about("sampling temperature (default: 0.2 local, the server's default otherwise)")] = None
    max_tokens: Annotated[int | None, _about("max tokens per reply, for every role (default: each role's own)")] = None
    seed: Annotated[int | None, _about("sampling seed")] = None
    role_models: Annotated[dict[str, str] | None, _about("model per role or agent name, like --role-model ROLE=MODEL")] = None


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _number(raw: Any, where: str, cast: type[int | float]) -> Any:
    kind = "an integer" if cast is int else "a number"
    if isinstance(raw, bool) or (cast is int and isinstance(raw, float) and not raw.is_integer()):
        raise ConfigError(f"{where}: expected {kind}, got {raw!r}")
    try:
        return cast(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind}, got {raw!r}") from None


def _role_models(raw: Any, where: str) -> dict[str, str]:
    if isinstance(raw, str):  # the environment's form, as for --role-model: ROLE=MODEL,ROLE=MODEL
        pairs = [item.partition("=") for item in raw.split(",") if item.strip()]
        if any(not sep or not role.strip() or not model.strip() for role, sep, model in pairs):
            raise ConfigError(f"{where}: expected ROLE=MODEL[,ROLE=MODEL...], got {raw!r}")
        return {role.strip(): model.strip() for role, _, model in pairs}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in raw.items()):
        raise ConfigError(f"{where}: expected an object mapping role or agent names to model names, got {raw!r}")
    return dict(raw)


def settings_from_config(config: RunnableConfig | Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> tuple[str, ModelSettings, dict[str, str]]:
    """The policy pack, model settings and per-role models of a run, from its ``configurable`` keys,
    else the ``AIDSAFE_*`` environment variables the CLI reads, else the CLI's defaults.

    A bad value raises :class:`~aidsafe.errors.ConfigError` naming the key or variable.
    """
    environ = os.environ if env is None else env
    configurable: Mapping[str, Any] = (config or {}).get("configurable") or {}

    def pick(key: str, env_name: str | None = None) -> tuple[Any, str]:
        if _present(value := configurable.get(key)):
            return value, f"configurable {key!r}"
        name = env_name or "AIDSAFE_" + key.upper()
        if _present(value := environ.get(name)):
            return value, f"environment variable {name}"
        return None, ""

    def text(key: str, env_name: str | None = None) -> str | None:
        value, where = pick(key, env_name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value

    def number(key: str, cast: type[int | float], env_name: str | None = None) -> Any:
        value, where = pick(key, env_name)
        return None if value is None else _number(value, where, cast)

    base_url = text("base_url")
    backend = text("backend") or ("openai" if base_url else "local")
    if backend not in backend_names():
        raise ConfigError(f"unknown backend {backend!r}; choose {', '.join(backend_names())}")
    structured = _env_text(environ, "AIDSAFE_STRUCTURED_OUTPUT") or "auto"
    if structured not in ("auto", "json_schema", "json_object"):
        raise ConfigError(f"environment variable AIDSAFE_STRUCTURED_OUTPUT: choose auto, json_schema or json_object, got {structured!r}")
    system_role = _env_text(environ, "AIDSAFE_SYSTEM_ROLE") or "auto"
    if system_role not in ("auto", "native", "merge"):
        raise ConfigError(f"environment variable AIDSAFE_SYSTEM_ROLE: choose auto, native or merge, got {system_role!r}")
    prefix_cache = _env_number(environ, "AIDSAFE_PREFIX_CACHE", int, 256)
    if prefix_cache < 0:
        raise ConfigError(f"environment variable AIDSAFE_PREFIX_CACHE: 0 (off) or more megabytes, got {prefix_cache}")
    settings = ModelSettings(
        backend=backend,
        model=text("model"),
        base_url=base_url,
        api_key_env=_env_text(environ, "AIDSAFE_API_KEY_ENV") or "OPENAI_API_KEY",
        temperature=number("temperature", float),
        max_tokens=number("max_tokens", int),
        timeout=_env_number(environ, "AIDSAFE_TIMEOUT", float, 300.0),
        max_retries=_env_number(environ, "AIDSAFE_MAX_RETRIES", int, 3),
        structured=cast("StructuredMode", structured),
        system_role=cast("SystemRole", system_role),
        n_ctx=_env_number(environ, "AIDSAFE_N_CTX", int, 8192),
        seed=number("seed", int),
        prefix_cache_mb=prefix_cache,
    )
    roles, where = pick("role_models", "AIDSAFE_ROLE_MODEL")
    role_models = _role_models(roles, where) if roles is not None else {}
    return text("policies") or "aidsafe5", settings, role_models


def _env_text(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value if _present(value) else None


def _env_number(environ: Mapping[str, str], name: str, cast: type[int | float], default: Any) -> Any:
    value = _env_text(environ, name)
    return default if value is None else _number(value, f"environment variable {name}", cast)


def _unchecked_model(settings: ModelSettings) -> ChatModel:
    """:func:`make_model` under another name: :func:`compile_graph` skips the settings check for it."""
    return make_model(settings)


def compile_for_studio(graph: str | Path, config: RunnableConfig | Mapping[str, Any] | None = None, *, check: bool = True) -> CompiledAidsafe:
    """Compile ``graph`` (shipped name or file) with the settings of ``config`` (see
    :func:`settings_from_config`).

    With ``check`` the model settings are checked (a missing model, the embedded model not
    installed ...) and the models are built, so a run fails at once with the reason. Without it
    (reading schemas, drawing the graph) nothing but the graph and the pack need to be right.
    Every problem raises :class:`StudioConfigError`, a :class:`~aidsafe.errors.ConfigError`.
    """
    try:
        policies, settings, role_models = settings_from_config(config)
        compiled = compile_graph(graph, policies, settings, role_models=role_models, model_factory=make_model if check else _unchecked_model)
        if check:
            for binding in compiled.bindings.values():
                compiled.model_pool.get(binding.settings)
    except ConfigError as exc:
        raise StudioConfigError(exc.message, file=exc.file, line=exc.line, field=exc.field) from exc
    except AidsafeError as exc:
        hint = "a served graph takes --backend, --model, --base-url ... as the run's configurable or context keys backend, model, base_url ..., or from the AIDSAFE_* environment variables"
        raise StudioConfigError(f"graph {str(graph)!r}: {exc} ({hint})") from exc
    return compiled


class _ServedGraph(CompiledStateGraph[Any, Any, Any, Any]):
    """The compiled graph with the schemas the server shows: :class:`StudioInput` as input (LangGraph
    Studio's input form), the prompt state as output."""

    def get_input_jsonschema(self, config: RunnableConfig | None = None) -> dict[str, Any]:
        return {**TypeAdapter(StudioInput).json_schema(), "title": self.get_name("Input")}

    def get_output_jsonschema(self, config: RunnableConfig | None = None) -> dict[str, Any]:
        return {**TypeAdapter(_STATE_SCHEMA).json_schema(), "title": self.get_name("Output")}


def studio_graph(compiled: CompiledAidsafe) -> Any:
    """The compiled LangGraph of ``compiled``, ready for the LangGraph API server.

    Its context schema is a :class:`StudioSettings` whose objects answer ``.models`` with this
    graph's model pool, so the context the server builds from a run's ``configurable`` or
    ``context`` keys reaches the nodes like the CLI's :class:`~aidsafe.graph.GraphContext`; the
    recursion limit sized for the graph applies unless a run sets its own; and its input schema is
    :class:`StudioInput`. The nodes, edges and state are the compiler's.
    """
    pool = compiled.model_pool

    @dataclass(frozen=True)
    class StudioContext(StudioSettings):
        @property
        def models(self) -> ModelPool:
            return pool

    graph = compiled.graph
    # what Pregel.copy does, into the subclass (the server's own copies keep the class)
    attrs = {k: v for k, v in graph.__dict__.items() if k != "__orig_class__"}
    served = _ServedGraph(**{**attrs, "context_schema": StudioContext})
    return served.with_config(recursion_limit=compiled.recursion_limit)


def graph_factory(graph: str | Path) -> GraphFactory:
    """A factory for ``langgraph.json`` serving ``graph`` (a shipped name or a graph file path).

    The server calls it with the run's config; it compiles off the event loop and closes the
    models' connections when the server is done with the graph.
    """

    @asynccontextmanager
    async def factory(config: RunnableConfig) -> AsyncIterator[Any]:
        # the server says whether it runs the graph or only reads it (schemas, state, drawing)
        running = bool((config.get("configurable") or {}).get("__is_for_execution__", True))
        compiled = await asyncio.to_thread(compile_for_studio, graph, config, check=running)
        try:
            yield studio_graph(compiled)
        finally:
            await compiled.aclose()

    factory.__name__ = factory.__qualname__ = Path(str(graph)).stem
    factory.__doc__ = f"The {str(graph)!r} graph for the LangGraph API server (see :mod:`aidsafe.studio`)."
    return factory


aidsafe = graph_factory("aidsafe")
ear_whisperer = graph_factory("ear_whisperer")
init_only = graph_factory("init_only")
roundtable = graph_factory("roundtable")
single = graph_factory("single")
