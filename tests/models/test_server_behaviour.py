"""What real servers do that a friendly stub would not: chat templates without a system role,
refusals and failures of the ``json_schema`` form, vLLM's ``json_object`` without the schema, and
several pipelines sharing one server's connections.

The server is the scripted HTTP server of conftest; where it renders a chat template it renders
Mixtral-8x7B-Instruct-v0.1's own (``tests/data/mixtral_chat_template.jinja``) with Jinja, as vLLM
does, and answers a template error 400 with the template's message, as vLLM does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import MIXTRAL_CHAT_TEMPLATE, render_chat_template

from aidsafe import ModelSettings, Pipeline
from aidsafe.cli import main
from aidsafe.models import base as model_base
from aidsafe.models import openai as openai_backend
from aidsafe.models.base import merge_system, rejects_system_role
from aidsafe.models.endpoints import Endpoint
from aidsafe.runner import wire_postfix


def _pipe(url: str, graph: str | Path = "aidsafe", **kw: Any) -> Pipeline:
    kw.setdefault("max_retries", 0)
    return Pipeline(graph, "aidsafe5", ModelSettings(backend="openai", base_url=url, model="served-model", **kw))


def _roles(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body["messages"]]


# --- system role -------------------------------------------------------------------------------


def test_merge_system_joins_the_system_text_to_the_first_user_turn() -> None:
    messages = [{"role": "system", "content": "RULES"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                {"role": "user", "content": "fix it"}]
    merged = merge_system(messages)
    assert merged == [{"role": "user", "content": "RULES\n\nQ"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "fix it"}]
    assert merge_system(merged) == merged  # nothing to merge: unchanged
    # what the Mixtral template renders once merged, and what it refuses before
    assert render_chat_template(MIXTRAL_CHAT_TEMPLATE, merged).startswith("<s>[INST] RULES\n\nQ [/INST]A</s>[INST] fix it [/INST]")
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        render_chat_template(MIXTRAL_CHAT_TEMPLATE, messages)


def test_the_mixtral_template_in_the_tests_is_the_one_llama_cpp_python_recognises() -> None:
    from conftest import require_extras

    require_extras("llama_cpp", extra="the [local] extra")
    import llama_cpp.llama_chat_format as chat_format
    assert chat_format.MIXTRAL_INSTRUCT_CHAT_TEMPLATE == MIXTRAL_CHAT_TEMPLATE


@pytest.mark.parametrize("text, refused", [
    ("Conversation roles must alternate user/assistant/user/assistant/...", True),
    ("Error code: 400 - {'object': 'error', 'message': 'System role not supported', 'type': 'BadRequestError'}", True),
    ("Only user and assistant roles are supported!", True),
    ("'messages[0].role' does not support 'system' with this model.", True),  # OpenAI's reasoning models
    ("This model's maximum context length is 8192 tokens", False),
    ("response_format json_schema is not supported", False),
])
def test_what_counts_as_a_template_without_a_system_role(text: str, refused: bool) -> None:
    assert rejects_system_role(text) is refused


def test_a_template_without_a_system_role_is_detected_and_remembered_per_endpoint(stub_server, caplog) -> None:
    stub, url = stub_server
    stub.chat_template = MIXTRAL_CHAT_TEMPLATE
    pipe = _pipe(url)
    with caplog.at_level(logging.WARNING, logger="aidsafe.models"):
        records = [pipe.run_one(f"question {i}") for i in range(3)]
    assert [r.status for r in records] == ["ok", "ok", "ok"]
    # the first call was refused, sent again merged; every later call was merged from the start
    assert _roles(stub.requests[0])[0] == "system"
    assert all(_roles(body)[0] == "user" for body in stub.requests[1:])
    assert len(stub.rendered) == len(stub.requests) - 1 == 12
    assert stub.requests[1]["messages"][0]["content"].endswith("question 0")  # the prompt follows the system text
    assert "intent" in records[0].usage and records[0].usage["intent"].calls == 1 and records[0].usage["intent"].retries == 0
    warnings = [r for r in caplog.records if "refuses a system message" in r.getMessage()]
    assert len(warnings) == 1  # said once
    notes = pipe.compiled.model_pool.wire_notes()["system_role"]
    assert notes == {f"{url} served-model": {"mode": "merge", "source": "detected",
                                             "reason": "Conversation roles must alternate user/assistant/user/assistant/..."}}
    assert wire_postfix(pipe.compiled.model_pool.wire_notes()) == {"system": "merged"}


def test_the_run_summary_and_progress_say_the_system_text_was_merged(stub_server, tmp_path, capsys) -> None:
    stub, url = stub_server
    stub.chat_template = MIXTRAL_CHAT_TEMPLATE
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(4)))
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(prompts), "-o", str(out), "--base-url", url, "--model", "served-model", "--concurrency", "2"]) == 0
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["ok"] == 4
    assert summary["run"]["system_role"][f"{url} served-model"]["source"] == "detected"
    assert summary["run"]["structured_output"][url] == {"mode": "json_schema", "source": "auto"}
    err = capsys.readouterr().err
    assert "system=merged" in err  # the progress bar
    assert "system text merged into the user turn (detected)" in err  # the printed summary


def test_system_role_merge_from_the_endpoints_file_or_the_graph_sends_no_system_message(stub_server, tmp_path) -> None:
    stub, url = stub_server
    stub.chat_template = MIXTRAL_CHAT_TEMPLATE
    settings = ModelSettings(backend="openai", model="served-model", max_retries=0, base_url=url,
                             endpoints=(Endpoint(url=url, system_role="merge"),))
    assert Pipeline("aidsafe", "aidsafe5", settings).run_one("q").status == "ok"
    assert all(_roles(body)[0] == "user" for body in stub.requests)
    # per role, in a graph file: only that role is merged
    stub.chat_template = None
    stub.requests.clear()
    graph = tmp_path / "g.yaml"
    shipped = (Path(__file__).parents[2] / "graphs" / "single.yaml").read_text()
    graph.write_text(shipped.replace("    reply: draft\n", "    reply: draft\n    system_role: merge\n", 1))
    assert "system_role: merge" in graph.read_text()
    record = _pipe(url, graph=graph).run_one("q")
    assert record.status == "ok"
    assert [_roles(body)[0] for body in stub.requests] == ["user"]


def test_system_role_native_gives_a_failed_record_that_says_what_to_do(stub_server) -> None:
    stub, url = stub_server
    stub.chat_template = MIXTRAL_CHAT_TEMPLATE
    record = _pipe(url, system_role="native").run_one("q")
    assert record.status == "failed" and record.error is not None and record.error.kind == "model_error"
    assert "Conversation roles must alternate" in record.error.message and "--chat-template" in record.error.message
    assert len(stub.requests) == 1  # a template error is not retried


def test_a_server_that_rejects_every_template_fails_each_record_clearly(stub_server, tmp_path) -> None:
    stub, url = stub_server
    stub.chat_template = "{{ raise_exception('Conversation roles must alternate, and this template takes nothing') }}"
    stub.template_status = 500  # llama-cpp-python's server answers a template error 500
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    main(["generate", str(prompts), "-o", str(out), "--base-url", url, "--model", "served-model", "--no-progress"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["0", "1", "2"]  # nothing lost: a failed record each
    assert {r["status"] for r in records} == {"failed"}
    assert all("even with the system text merged" in r["error"]["message"] for r in records)
    # at most one refused native call per prompt in flight before the first refusal, then one merged
    # call per prompt: no retry loop on an answer that cannot change
    assert [_roles(body)[0] for body in stub.requests].count("user") == 3 and len(stub.requests) <= 6


# --- structured output -------------------------------------------------------------------------


def test_a_5xx_that_mentions_json_schema_is_retried_never_a_downgrade(stub_server, caplog) -> None:
    stub, url = stub_server
    stub.script = lambda n, body: {"status": 500, "message": "json_schema grammar compilation timed out"} if n in (1, 3) else None
    with caplog.at_level(logging.WARNING, logger="aidsafe.models"):
        records = [_pipe(url, max_retries=2).run_one(f"q{i}") for i in range(3)]
    assert [r.status for r in records] == ["ok"] * 3
    assert {b["response_format"]["type"] for b in stub.requests} == {"json_schema"}
    assert records[0].usage["intent"].retries == 1
    assert not [r for r in caplog.records if "json_object" in r.getMessage()]


def test_a_timeout_is_retried_never_a_downgrade(stub_server) -> None:
    stub, url = stub_server
    stub.script = lambda n, body: {"hang": 1.5} if n == 1 else None
    record = _pipe(url, timeout=0.5, max_retries=2).run_one("q")
    assert record.status == "ok"
    assert {b["response_format"]["type"] for b in stub.requests} == {"json_schema"}


@pytest.mark.parametrize("status, message", [
    (400, "response_format: json_schema is not supported by this server"),
    (500, "1 validation error: response_format.type: Input should be 'text' or 'json_object'"),  # llama-cpp-python
])
def test_a_server_that_says_it_takes_no_json_schema_gets_json_object(stub_server, caplog, status: int, message: str) -> None:
    stub, url = stub_server
    stub.script = lambda n, body: ({"status": status, "message": message}
                                   if body["response_format"]["type"] == "json_schema" else None)
    pipe = _pipe(url)
    with caplog.at_level(logging.WARNING, logger="aidsafe.models"):
        assert pipe.run_one("q").status == "ok"
        assert pipe.run_one("q2").status == "ok"
    kinds = [b["response_format"]["type"] for b in stub.requests]
    assert kinds[0] == "json_schema" and set(kinds[1:]) == {"json_object"} and len(kinds) == 9
    # llama-cpp-python's server reads the budget from max_tokens only; langchain-openai sends max_completion_tokens
    assert "max_tokens" not in stub.requests[0] and stub.requests[0]["max_completion_tokens"] == 512
    assert all(b["max_tokens"] == b["max_completion_tokens"] for b in stub.requests[1:])
    note = pipe.compiled.model_pool.wire_notes()["structured_output"][url]
    assert note["mode"] == "json_object" and note["source"] == "fallback" and message[-20:] in note["reason"]
    assert len([r for r in caplog.records if "does not take response_format json_schema" in r.getMessage()]) == 1
    assert wire_postfix(pipe.compiled.model_pool.wire_notes()) == {"schema": "json_object"}


@pytest.mark.parametrize("status, message", [
    (400, "Invalid schema for response_format 'draft': In context=(), 'additionalProperties' is required to be supplied and to be false"),
    (422, "[{'loc': ['body', 'temperature'], 'msg': 'Input should be less than 2', 'input': {'response_format': 'json_schema'}}]"),
    (400, "response_format json_schema: grammar backend xgrammar does not handle 'patternProperties'"),
])
def test_a_4xx_about_the_schema_or_another_field_is_no_reason_to_drop_the_schema(stub_server, status: int, message: str) -> None:
    stub, url = stub_server
    stub.script = lambda n, body: {"status": status, "message": message}
    pipe = _pipe(url)
    record = pipe.run_one("q")
    assert record.status == "failed" and record.error is not None and message[:30] in record.error.message
    assert {b["response_format"]["type"] for b in stub.requests} == {"json_schema"}
    assert pipe.compiled.model_pool.wire_notes()["structured_output"] == {}


def test_an_endpoint_that_may_be_vllm_is_not_downgraded_either(stub_server) -> None:
    stub, url = stub_server
    stub.owned_by = None  # GET /models fails: it might be vLLM
    stub.script = lambda n, body: ({"status": 400, "message": "response_format type json_schema is not supported"}
                                   if body["response_format"]["type"] == "json_schema" else None)
    record = _pipe(url).run_one("q")
    assert record.status == "failed" and record.error is not None and "could not be read from GET /models" in record.error.message
    assert {b["response_format"]["type"] for b in stub.requests} == {"json_schema"}
    stub.owned_by = "llama-cpp-python"  # readable now: asked again, not remembered as unknown
    assert _pipe(url).run_one("q").status == "ok"
    assert stub.requests[-1]["response_format"]["type"] == "json_object"


def test_a_vllm_server_is_never_downgraded_to_json_object(stub_server) -> None:
    stub, url = stub_server
    stub.owned_by = "vllm"
    stub.script = lambda n, body: {"status": 400, "message": "response_format: json_schema is not supported"}
    record = _pipe(url).run_one("q")
    assert record.status == "failed" and record.error is not None
    assert "vLLM" in record.error.message and "--structured-output json_object" in record.error.message
    assert {b["response_format"]["type"] for b in stub.requests} == {"json_schema"}
    # asked for explicitly, json_object is sent, and the summary says the option chose it
    stub.script = None
    stub.requests.clear()
    pipe = _pipe(url, structured="json_object")
    assert pipe.run_one("q").status == "ok"
    assert {b["response_format"]["type"] for b in stub.requests} == {"json_object"}
    assert pipe.compiled.model_pool.wire_notes()["structured_output"][url] == {"mode": "json_object", "source": "--structured-output"}


# --- library use -------------------------------------------------------------------------------


def test_closing_one_pipeline_leaves_the_connections_another_shares(stub_server) -> None:
    stub, url = stub_server
    stub.script = lambda n, body: {"hang": 0.5} if n >= 2 else None

    async def both() -> list[str]:
        first, second = _pipe(url, graph="single"), _pipe(url, graph="single")
        a = await first.arun_one("a")
        busy = asyncio.create_task(second.arun_one("b"))  # in flight on the shared pools
        await asyncio.sleep(0.2)
        await first.compiled.aclose()
        b = await busy  # not cut off by the other pipeline's close
        c = await second.arun_one("c")
        await second.compiled.aclose()
        by_url = openai_backend._POOLS.get(asyncio.get_running_loop(), {})
        assert url not in by_url  # the last user closed them
        return [a.status, b.status, c.status]

    assert asyncio.run(both()) == ["ok", "ok", "ok"]


def test_the_pools_of_finished_event_loops_are_released(stub_server) -> None:
    _stub, url = stub_server
    for i in range(3):
        assert asyncio.run(_pipe(url).arun_one(f"q{i}")).status == "ok"
    # one entry per event loop, dropped once the loop is closed and a new one takes pools (before:
    # one more entry for every asyncio.run, for the life of the process)
    holding = [loop for loop, by_url in list(openai_backend._POOLS.items()) if url in by_url]
    assert len(holding) <= 1


def test_system_role_is_part_of_the_settings_vocabulary() -> None:
    assert set(model_base.SystemRole.__args__) == {"auto", "native", "merge"}  # type: ignore[attr-defined]
    assert ModelSettings().system_role == "auto"


def test_pipelines_on_one_server_from_several_threads_share_its_limit(stub_server) -> None:
    stub, url = stub_server
    stub.latency = 0.05
    errors: list[BaseException] = []
    statuses: list[str] = []

    def worker(tag: str) -> None:
        try:
            pipe = _pipe(url, graph="single", max_in_flight=2)
            statuses.extend(r.status for r in pipe.run([f"{tag}{i}" for i in range(6)], concurrency=4))
        except BaseException as exc:  # reported below
            errors.append(exc)

    import threading

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert statuses == ["ok"] * 12
    assert stub.peak_in_flight <= 2  # one limit for the endpoint, across both threads' event loops


def test_a_loop_closed_with_calls_in_flight_gives_their_slots_back() -> None:
    from aidsafe.models.endpoints import Router

    router = Router([Endpoint(url="http://127.0.0.1:9/v1")], 1)

    async def take() -> None:
        await router.acquire()  # never released: the loop is torn down

    asyncio.run(take())
    assert router.states[0].in_flight == 1

    async def take_again() -> int:
        state = await asyncio.wait_for(router.acquire(), 2)  # would wait for ever for the lost slot
        await router.release(state, "neutral")
        return state.in_flight

    assert asyncio.run(take_again()) == 0
