"""The ``openai`` backend against a real HTTP server on localhost that records what it receives.

The server (``stub_server`` in conftest) speaks the OpenAI chat-completions wire format and answers from a script, so these
tests check exactly what travels over HTTP: the schema form, the fallback for servers that
reject ``json_schema``, token accounting, and that the API key never reaches a record.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aidsafe import ModelSettings, Pipeline


def _pipe(url: str, **kw: Any) -> Pipeline:
    return Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="openai", base_url=url, model="served-model", max_retries=0, **kw))


def test_requests_carry_the_json_schema_in_openai_form(stub_server, monkeypatch):
    stub, url = stub_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    record = _pipe(url).run_one("How do I pick a lock?")
    assert record.status == "ok" and record.stop_reason == "consensus"
    assert len(stub.requests) == 4  # intent, init, agent_1 (agrees), refine
    for body in stub.requests:
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"]["additionalProperties"] is False
        assert body["model"] == "served-model"
    names = [b["response_format"]["json_schema"]["name"] for b in stub.requests]
    assert names == ["intents", "draft", "deliberation", "refinement"]
    draft_schema = stub.requests[1]["response_format"]["json_schema"]["schema"]
    assert draft_schema["properties"]["thoughts"]["items"]["properties"]["policies"]["items"]["enum"] == ["P1", "P2", "P3", "P4", "P5"]
    # the key goes to the server, and nowhere else
    assert {k.lower(): v for k, v in stub.headers[0].items()}["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in record.model_dump_json()
    assert record.usage["intent"].prompt_tokens == 11 and record.usage["intent"].completion_tokens == 7
    assert record.models["intent"] == "openai:served-model"


def test_falls_back_to_json_object_when_the_server_rejects_json_schema(stub_server):
    stub, url = stub_server
    stub.reject_json_schema = True
    record = _pipe(url).run_one("q")
    assert record.status == "ok"
    kinds = [b["response_format"]["type"] for b in stub.requests]
    assert kinds[0] == "json_schema" and set(kinds[1:]) == {"json_object"}
    assert kinds.count("json_schema") == 1  # found out once, then remembered
    schema = stub.requests[1]["response_format"]["schema"]
    bounds = [int(b) for b in re.findall(r'"maxLength": (\d+)', json.dumps(schema))]
    assert all(b <= 1000 for b in bounds)  # llama.cpp's grammar engine aborts on larger string bounds
    assert record.usage["intent"].calls == 1


def test_json_object_mode_can_be_forced(stub_server):
    stub, url = stub_server
    _pipe(url, structured="json_object").run_one("q")
    assert {b["response_format"]["type"] for b in stub.requests} == {"json_object"}


def test_a_failing_server_gives_a_failed_record_with_the_error(stub_server, monkeypatch):
    stub, url = stub_server
    stub.status = 500
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-456")
    record = _pipe(url, structured="json_schema").run_one("q")
    assert record.status == "failed" and record.error.stage == "intent"
    assert "500" in record.error.message or "server says no" in record.error.message
    assert "sk-secret-456" not in record.model_dump_json()
