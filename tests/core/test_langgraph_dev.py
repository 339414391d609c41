"""LangGraph's own tooling serves the shipped graphs: ``langgraph.json`` + :mod:`aidsafe.studio`.

The factory tests run in process and need nothing beyond aidsafe's own dependencies. The server
tests start ``langgraph dev`` (the ``studio`` extra: ``langgraph-cli[inmem]``, ``langgraph-sdk``)
on a free localhost port, drive it with the LangGraph SDK and check that a run through the API
gives the same record as the in-process :class:`~aidsafe.Pipeline` with the same fake model.
Without the extra they skip, unless ``AIDSAFE_REQUIRE_E2E`` is set: then they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from conftest import require_extras

from aidsafe import studio
from aidsafe.errors import ConfigError
from aidsafe.graph import GraphContext, PromptState, compile_graph, initial_state, load_graph_spec
from aidsafe.models import ModelSettings
from aidsafe.pipeline import Pipeline, record_from_state
from aidsafe.records import Record
from aidsafe.resources import list_builtin

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "langgraph.json"
PROMPT = "How do I pick a lock?"
GENERATION_GRAPHS = ["aidsafe", "roundtable", "init_only", "single"]



def _pipeline_record(graph: str, behaviour: str = "default", prompt_id: str = "p1") -> tuple[Pipeline, Record]:
    pipe = Pipeline(graph, "aidsafe5", ModelSettings(backend="fake", model=behaviour))
    return pipe, pipe.run_one(PROMPT, prompt_id)


def _same_record(got: Record, want: Record) -> None:
    """The deterministic parts first (readable failures), then everything."""
    assert got.status == want.status == "ok", (got.error, want.error)
    assert [t.text for t in got.thoughts] == [t.text for t in want.thoughts]
    assert got.response == want.response and got.response
    assert (got.stop_reason, got.rounds) == (want.stop_reason, want.rounds)
    assert got.model_dump() == want.model_dump()


# --- langgraph.json and the factories, in process ---------------------------------------------


def test_langgraph_json_serves_every_shipped_graph() -> None:
    config = json.loads(CONFIG.read_text(encoding="utf-8"))
    assert config["dependencies"] == ["."]
    graphs = config["graphs"]
    assert sorted(graphs) == list_builtin("graphs") == sorted(studio.SHIPPED_GRAPHS)
    for name, entry in graphs.items():
        assert entry["path"] == f"aidsafe.studio:{name}"
        assert callable(getattr(studio, name))
        assert entry["description"] == load_graph_spec(name)[0].description


def test_settings_from_config_configurable_then_env_then_defaults() -> None:
    policies, settings, roles = studio.settings_from_config(None, env={})
    assert (policies, settings, roles) == ("aidsafe5", ModelSettings(), {})
    env = {"AIDSAFE_POLICIES": "llamaguard3", "AIDSAFE_BASE_URL": "http://localhost:8000/v1", "AIDSAFE_MODEL": "m",
           "AIDSAFE_TEMPERATURE": "0.5", "AIDSAFE_TIMEOUT": "9", "AIDSAFE_ROLE_MODEL": "intent=small, refiner=big",
           "AIDSAFE_PREFIX_CACHE": "64"}
    policies, settings, roles = studio.settings_from_config({}, env=env)
    assert policies == "llamaguard3" and roles == {"intent": "small", "refiner": "big"}
    assert settings.prefix_cache_mb == 64
    assert (settings.backend, settings.model, settings.base_url, settings.temperature, settings.timeout) == ("openai", "m", "http://localhost:8000/v1", 0.5, 9.0)
    configurable = {"policies": "aidsafe5", "backend": "fake", "model": "agree", "temperature": 0, "max_tokens": 64, "seed": 3,
                    "role_models": {"intent": "x"}, "thread_id": "ignored", "base_url": ""}
    policies, settings, roles = studio.settings_from_config({"configurable": configurable}, env=env)
    assert policies == "aidsafe5" and roles == {"intent": "x"}
    assert (settings.backend, settings.model, settings.temperature, settings.max_tokens, settings.seed) == ("fake", "agree", 0.0, 64, 3)
    assert settings.base_url == "http://localhost:8000/v1"  # an empty value falls through to the environment


@pytest.mark.parametrize(
    ("configurable", "env", "message"),
    [
        ({"backend": "nope"}, {}, "unknown backend 'nope'"),
        ({"temperature": "hot"}, {}, "configurable 'temperature': expected a number, got 'hot'"),
        ({"max_tokens": 1.5}, {}, "configurable 'max_tokens': expected an integer"),
        ({"model": 3}, {}, "configurable 'model': expected a string"),
        ({"role_models": ["intent"]}, {}, "configurable 'role_models': expected an object"),
        ({}, {"AIDSAFE_SEED": "x"}, "environment variable AIDSAFE_SEED: expected an integer"),
        ({}, {"AIDSAFE_ROLE_MODEL": "intent"}, "environment variable AIDSAFE_ROLE_MODEL: expected ROLE=MODEL"),
        ({}, {"AIDSAFE_STRUCTURED_OUTPUT": "xml"}, "AIDSAFE_STRUCTURED_OUTPUT: choose auto"),
        ({}, {"AIDSAFE_PREFIX_CACHE": "-1"}, "environment variable AIDSAFE_PREFIX_CACHE: 0 (off) or more megabytes, got -1"),
    ],
)
def test_settings_from_config_names_the_bad_value(configurable: dict[str, Any], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        studio.settings_from_config({"configurable": configurable}, env=env)


async def _run_factory(factory: Any, config: dict[str, Any], state: dict[str, Any], context: dict[str, Any] | None = None) -> Any:
    async with factory(config) as graph:
        return await graph.ainvoke(state, context=context)


def test_factory_graph_runs_in_process_like_the_pipeline(clean_env: None) -> None:
    pipe, want = _pipeline_record("aidsafe")
    # models from the factory's config (no context), and from a context dict as the server passes it
    by_config = asyncio.run(_run_factory(studio.aidsafe, {"configurable": {"backend": "fake"}}, {"id": "p1", "prompt": PROMPT}))
    by_context = asyncio.run(_run_factory(studio.aidsafe, {"configurable": {"backend": "fake"}}, {"id": "p1", "prompt": PROMPT}, {"backend": "fake"}))
    _same_record(record_from_state(by_config, pipe.compiled), want)
    _same_record(record_from_state(by_context, pipe.compiled), want)


def test_factory_binds_context_and_limit_without_changing_the_compiler(clean_env: None) -> None:
    async def inspect() -> tuple[Any, Any, Any, Any]:
        async with studio.roundtable({"configurable": {"backend": "fake"}}) as graph:
            return graph.get_context_jsonschema(), graph.get_input_jsonschema(), graph.get_output_jsonschema(), graph.config

    context, input_schema, output_schema, config = asyncio.run(inspect())
    assert {"policies", "backend", "model", "base_url", "temperature", "max_tokens", "seed", "role_models"} <= set(context["properties"])
    assert input_schema["required"] == ["prompt"] and set(input_schema["properties"]) == {"prompt", "id"}
    assert {"thoughts", "response", "stop_reason", "rounds"} <= set(output_schema["properties"])
    compiled = compile_graph("roundtable", "aidsafe5", ModelSettings(backend="fake"))
    assert config["recursion_limit"] == compiled.recursion_limit
    assert compiled.graph.context_schema is GraphContext  # what the CLI runs is untouched


def test_factory_errors_are_config_errors(clean_env: None) -> None:
    def enter(factory: Any, configurable: dict[str, Any]) -> None:
        async def go() -> None:
            async with factory({"configurable": configurable}):
                pass

        asyncio.run(go())

    with pytest.raises(ConfigError, match="no shipped policy pack named 'nope'"):
        enter(studio.aidsafe, {"backend": "fake", "policies": "nope"})
    with pytest.raises(ConfigError, match="no shipped graph named 'nope'"):
        enter(studio.graph_factory("nope"), {"backend": "fake"})
    with pytest.raises(ConfigError, match=r"the openai backend needs --model .* configurable or context keys"):
        enter(studio.aidsafe, {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"})
    # reading the graph (schemas, drawing) needs no runnable model settings
    enter(studio.aidsafe, {"backend": "openai", "__is_for_execution__": False})
    with pytest.raises(ValueError):  # the server shows the message of a ValueError with the failed run
        enter(studio.aidsafe, {"backend": "fake", "policies": "nope"})


def test_own_graph_file_gets_a_factory(tmp_path: Path, clean_env: None) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text((ROOT / "graphs" / "single.yaml").read_text(encoding="utf-8").replace("name: single", "name: mine"), encoding="utf-8")
    factory = studio.graph_factory(path)
    assert factory.__name__ == "mine"
    state = asyncio.run(_run_factory(factory, {"configurable": {"backend": "fake"}}, {"prompt": PROMPT}))
    assert state["response"] and state["thoughts"]


# --- langgraph dev, through the API ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env() -> dict[str, str]:
    drop = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_CONTROL_PLANE_API_KEY", "LANGGRAPH_CLOUD_LICENSE_KEY", "LANGSMITH_ENDPOINT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("AIDSAFE_")}
    env.update(
        LANGGRAPH_CLI_NO_ANALYTICS="1",  # langgraph-cli's usage reporting
        LANGGRAPH_NO_VERSION_CHECK="true",  # the server's check for a newer langgraph-api on PyPI
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``langgraph dev`` on a free localhost port, run from a scratch folder (where it keeps its
    ``.langgraph_api`` state) with the repository's ``langgraph.json``; its process group is
    ended after the module."""
    require_extras("langgraph_api", "langgraph_cli", "langgraph_sdk", extra="the [studio] extra (langgraph-cli[inmem], langgraph-sdk)")
    work = tmp_path_factory.mktemp("langgraph_dev")
    log_path = work / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "langgraph_cli", "dev", "--no-browser", "--no-reload",
        "--host", "127.0.0.1", "--port", str(port), "--config", str(CONFIG),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=work, env=_server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not answer on {url}/ok within 120 s:\n{_tail(log_path)}")
            time.sleep(0.25)
        yield url
    finally:
        _end(proc)


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


def _end(proc: subprocess.Popen[bytes]) -> None:
    """End the server's process group: SIGTERM, then SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _run(url: str, graph: str, state: dict[str, Any], **settings: Any) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One run on a new thread: (run, what join returned, the thread's final state values)."""
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=url)
    thread = client.threads.create()
    run = client.runs.create(thread["thread_id"], graph, input=state, **settings)
    joined = client.runs.join(thread["thread_id"], run["run_id"])
    run = dict(client.runs.get(thread["thread_id"], run["run_id"]))
    values = client.threads.get_state(thread["thread_id"])["values"]
    return run, joined, dict(values) if isinstance(values, dict) else {}


def test_server_lists_every_shipped_graph(server: str) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    assistants = client.assistants.search(limit=100)
    assert sorted(a["graph_id"] for a in assistants) == list_builtin("graphs")
    aidsafe = next(a for a in assistants if a["graph_id"] == "aidsafe")
    schemas: Any = client.assistants.get_schemas(aidsafe["assistant_id"])
    assert schemas["input_schema"]["required"] == ["prompt"]
    assert {"policies", "backend", "model", "base_url"} <= set(schemas["context_schema"]["properties"])
    assert "thoughts" in schemas["output_schema"]["properties"]
    drawn = client.assistants.get_graph(aidsafe["assistant_id"])
    compiled = compile_graph("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    assert {n["id"] for n in drawn["nodes"]} == set(compiled.graph.get_graph().nodes)


@pytest.mark.parametrize(
    ("graph", "how", "behaviour"),
    [("aidsafe", "configurable", "default"), ("roundtable", "context", "never-agree"), ("init_only", "configurable", "default"), ("single", "context", "default")],
)
def test_server_run_matches_pipeline_record(server: str, graph: str, how: str, behaviour: str) -> None:
    pipe, want = _pipeline_record(graph, behaviour)
    settings = {"backend": "fake", "model": behaviour}
    run, joined, values = _run(server, graph, {"id": "p1", "prompt": PROMPT}, **({"config": {"configurable": settings}} if how == "configurable" else {"context": settings}))
    assert run["status"] == "success", joined
    assert values and values == joined
    assert values["id"] == "p1" and values["prompt"] == PROMPT
    _same_record(record_from_state(cast(PromptState, values), pipe.compiled), want)


def test_server_runs_the_ear_whisperer_like_in_process(server: str) -> None:
    """A whole initial state as input works too (here: what ``aidsafe pairs`` starts from)."""
    compiled = compile_graph("ear_whisperer", "aidsafe5", ModelSettings(backend="fake"))
    start = initial_state("p1", PROMPT)
    want = asyncio.run(compiled.graph.ainvoke(start, config={"recursion_limit": compiled.recursion_limit}, context=compiled.context()))
    run, _, values = _run(server, "ear_whisperer", dict(start), config={"configurable": {"backend": "fake"}})
    assert run["status"] == "success"
    assert values == json.loads(json.dumps(want))


def test_server_reports_config_errors(server: str) -> None:
    run, joined, _ = _run(server, "aidsafe", {"prompt": PROMPT}, config={"configurable": {"backend": "fake", "policies": "nope"}})
    assert run["status"] == "error"
    assert joined["__error__"]["error"] == "StudioConfigError"
    assert "no shipped policy pack named 'nope' (available: aidsafe5, llamaguard3)" in joined["__error__"]["message"]
