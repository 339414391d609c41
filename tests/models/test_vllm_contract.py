"""aidsafe against vLLM's own code: every request the ``openai`` backend sends, read by vLLM's request
model; every ``vllm serve`` command in docs/*.md and the README, parsed by vLLM's argument parser;
and vLLM's answer to a chat template that refuses a system message, recognised by aidsafe.

The requests are recorded by the scripted server of conftest while aidsafe runs as it would against
vLLM: every shipped generation graph, the ear-whisperer (its safety scorer asks for
log-probabilities), the judge's scores and pairwise comparison, a repair call, the system text merged
for a chat template without a system role, ``json_object`` mode, and one call for each registered
reply kind. Each body is then given to vLLM's ``ChatCompletionRequest`` (the model ``vllm serve``
validates ``POST /v1/chat/completions`` with), in a separate process: importing vLLM sets
process-wide environment variables for torch, which the rest of the suite must not inherit. That
process reports what vLLM understood, and the test compares it with what aidsafe meant to send:

- the body validates, and vLLM ignores none of its keys (vLLM accepts unknown keys and silently drops
  them, so a misspelt or unsupported field would pass validation unnoticed);
- a ``json_schema`` response format becomes a constraint on exactly the schema aidsafe sent, and
  vLLM's default structured-output backend (xgrammar, chosen first under ``auto``) compiles it;
- a ``json_object`` response format constrains the reply to JSON only: vLLM drops the ``schema``
  key (this is why aidsafe never falls back to ``json_object`` on a vLLM server on its own);
- the messages, the reply budget, the seed, the temperature and log-probabilities reach vLLM's
  sampling parameters as sent.

The chat template docs/vllm.md gives for Mixtral-8x7B-Instruct (a system message put into the first
user turn) is checked without vLLM: it must render what the model's own template renders for
aidsafe's merged messages.

The tests that import vLLM are skipped when it is not installed. ``.ci/run`` installs vLLM's wheel
without its dependencies, plus the few small packages its request model and argument parser import
(docs/vllm.md, "Where the flags were checked"): no GPU and no CUDA libraries are needed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MIXTRAL_CHAT_TEMPLATE, render_chat_template

import aidsafe.evals.kinds  # noqa: F401 - registers the evaluation graders' reply kinds
from aidsafe import ModelSettings, Pipeline
from aidsafe.errors import ConfigError
from aidsafe.judge import Judge
from aidsafe.kinds import FakeRequest, get_kind, kind_names, reply_schema
from aidsafe.models.base import merge_system, rejects_system_role
from aidsafe.models.openai import OpenAIChatModel
from aidsafe.pairs import PairMaker
from aidsafe.records import Record

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (see docs/vllm.md)")
DOC = Path(__file__).parents[2] / "docs" / "vllm.md"
README = Path(__file__).parents[2] / "README.md"

GRAPHS = sorted(p.stem for p in (Path(__file__).parents[2] / "graphs").glob("*.yaml"))
PACK_IDS = ["P1", "P2", "P3", "P4", "P5"]  # the aidsafe5 pack's ids, which the schemas' enums carry
SEED = 1234
TEMPERATURE = 0.7

READ_BACK = r'''
import copy, json, sys
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

def ignored(model):
    return sorted((getattr(model, "model_extra", None) or {}).keys())

bodies = json.load(open(sys.argv[1]))
out = []
for body in bodies:
    try:
        req = ChatCompletionRequest.model_validate(copy.deepcopy(body))
    except Exception as exc:
        out.append({"error": f"{type(exc).__name__}: {exc}"})
        continue
    item = {"ignored": {"request": ignored(req)}, "format": None}
    fmt = req.response_format
    if fmt is not None:
        item["format"] = fmt.type
        item["ignored"]["response_format"] = ignored(fmt)
        if fmt.json_schema is not None:
            item["ignored"]["json_schema"] = ignored(fmt.json_schema)
            item["schema_name"] = fmt.json_schema.name
            item["strict"] = fmt.json_schema.strict
    so = req.extract_structured_outputs()
    item["constraint"] = None if so is None else {"json": so.json, "json_object": so.json_object}
    item["messages"] = [{"role": m["role"], "content": m.get("content")} for m in req.messages]
    budget = req.max_completion_tokens if req.max_completion_tokens is not None else req.__dict__.get("max_tokens")
    item["budget"] = budget
    sp = req.to_sampling_params(budget if budget is not None else 16, {})
    item["sampling"] = {"seed": sp.seed, "temperature": sp.temperature, "logprobs": sp.logprobs}
    try:
        validate_xgrammar_grammar(sp)
        item["xgrammar"] = "ok"
    except Exception as exc:
        item["xgrammar"] = f"{type(exc).__name__}: {exc}"
    out.append(item)
json.dump(out, open(sys.argv[2], "w"), default=repr)
'''


PARSE = r'''
import contextlib, io, json, sys
from vllm.entrypoints.common.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = make_arg_parser(FlexibleArgumentParser())
out = []
for argv in json.load(open(sys.argv[1])):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
        out.append({"ok": True, "model": args.model_tag})
    except SystemExit:
        out.append({"ok": False, "error": err.getvalue()[-600:]})
json.dump(out, open(sys.argv[2], "w"))
'''


REFUSE = r'''
import json, sys, jinja2
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.exceptions import VLLMValidationError
from vllm.renderers.hf import _template_error_reason

out = []
for message in json.load(open(sys.argv[1])):
    try:
        raise jinja2.TemplateError(message)
    except jinja2.TemplateError as exc:  # what vllm/renderers/hf.py makes of a template's exception
        error = VLLMValidationError(_template_error_reason(exc))
    response = create_error_response(error)
    out.append({"status": response.error.code, "body": response.model_dump()})
json.dump(out, open(sys.argv[2], "w"))
'''


def in_vllm(script: str, data: Any, tmp_path: Path) -> Any:
    """Run ``script`` with vLLM in a fresh process: it reads ``data`` (JSON) from ``argv[1]`` and
    writes its answer (JSON) to ``argv[2]``."""
    sent, read = tmp_path / "in.json", tmp_path / "out.json"
    sent.write_text(json.dumps(data), encoding="utf-8")
    # the CPU platform: vLLM's argument parser computes its defaults from the device; no usage reports
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CONFIGURE_LOGGING": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(sent), str(read)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(read.read_text(encoding="utf-8"))


def vllm_reads(bodies: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """What vLLM's request model makes of each body (see ``READ_BACK``)."""
    return in_vllm(READ_BACK, bodies, tmp_path)


def serve_commands(text: str) -> list[list[str]]:
    """The arguments after ``vllm serve`` of each such command in the ``bash`` blocks of ``text``
    (continuation lines joined; environment variables before it and a trailing ``&`` left out)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words.pop(0)
            if words[:2] == ["vllm", "serve"]:
                commands.append(words[2:-1] if words[-1] == "&" else words[2:])
    return commands


def _as_the_fake_model(number: int, body: dict[str, Any]) -> dict[str, Any] | None:
    """A schema-valid reply for the kind the body names (the fake backend's script for it), so every
    role of a graph gets to make its call; ``json_object`` bodies get the stub's own answers."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return None
    kind = get_kind(fmt["json_schema"]["name"])
    if kind.fake is None:
        return None
    reply = kind.fake(FakeRequest("default", body["messages"], fmt["json_schema"]["schema"], "P1"))
    return {"content": reply if isinstance(reply, str) else json.dumps(reply)}


def _settings(url: str, **kw: Any) -> ModelSettings:
    kw.setdefault("structured", "json_schema")
    kw.setdefault("model", "served-model")
    return ModelSettings(backend="openai", base_url=url, max_retries=0, seed=SEED, temperature=TEMPERATURE, **kw)


def _record(i: int) -> Record:
    return Record.model_validate({
        "id": f"r{i}", "prompt": f"How do I pick a lock? ({i})", "graph": "aidsafe",
        "policy_set": {"name": "aidsafe5", "version": "1.0"},
        "intents": {"explicit": ["open a lock"], "implicit": []}, "deliberation": [], "stop_reason": "consensus", "rounds": 1,
        "thoughts": [{"text": "P1 allows general locksmithing knowledge.", "policies": ["P1"]}],
        "removed_thoughts": [], "response": "Call a locksmith, or see the lock maker's guide.",
        "models": {}, "usage": {}, "status": "ok",
    })


def _direct_calls(url: str) -> None:
    """One call for each registered reply kind, straight through the backend (the kinds no shipped
    graph sends, such as the evaluation graders', travel in the same ``response_format``)."""

    async def calls() -> None:
        model = OpenAIChatModel(_settings(url, max_tokens=321))
        try:
            for name in kind_names():
                kind = get_kind(name)
                options = {"logprobs": True} if kind.logprobs else {}
                await model.complete([{"role": "system", "content": f"You answer as {name}."}, {"role": "user", "content": "q"}],
                                     schema=reply_schema(kind, PACK_IDS), schema_name=name, **options)
        finally:
            await model.aclose()

    asyncio.run(calls())


def test_the_chat_template_in_the_docs_renders_what_aidsafe_merges() -> None:
    template = re.search(r"```jinja\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert template is not None
    rules, question = "RULES: cite the policies.\nReply with JSON.", "How do I pick a lock?"
    conversations = [
        [{"role": "system", "content": rules}, {"role": "user", "content": question}],  # a call
        [{"role": "system", "content": rules}, {"role": "user", "content": question},  # a repair call
         {"role": "assistant", "content": "not JSON"}, {"role": "user", "content": "Your reply was not valid."}],
        [{"role": "user", "content": question}],  # no system text
    ]
    for messages in conversations:
        assert render_chat_template(template.group(1), messages) == render_chat_template(MIXTRAL_CHAT_TEMPLATE, merge_system(messages))
    with pytest.raises(Exception, match="roles must alternate"):
        render_chat_template(template.group(1), [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@needs_vllm
def test_every_vllm_serve_command_in_the_docs_parses(tmp_path):
    commands = serve_commands(DOC.read_text(encoding="utf-8"))
    assert len(commands) >= 5
    for page in [README, *sorted(DOC.parent.glob("*.md"))]:  # the README's and the other pages' too
        if page != DOC:
            commands += serve_commands(page.read_text(encoding="utf-8"))
    flags = {word.split("=")[0] for argv in commands for word in argv if word.startswith("--")}
    assert {"--tensor-parallel-size", "--enable-prefix-caching", "--max-num-seqs", "--chat-template", "--enable-lora"} <= flags
    removed = ["some/model", "--guided-decoding-backend", "xgrammar"]  # the pre-0.11 name, which the page says is gone
    parsed = in_vllm(PARSE, [*commands, removed], tmp_path)
    for argv, result in zip(commands, parsed, strict=False):
        assert result["ok"], f"vllm serve {shlex.join(argv)}: {result['error']}"
        assert result["model"] == argv[0]
    assert not parsed[-1]["ok"] and "--guided-decoding-backend" in parsed[-1]["error"]


@needs_vllm
def test_aidsafe_recognises_vllms_answer_to_a_template_without_a_system_role(tmp_path):
    # what Mixtral-8x7B-Instruct's and Gemma's templates raise on a system message, as vLLM answers it
    raised = [render_error(MIXTRAL_CHAT_TEMPLATE), "System role not supported"]
    for answer in in_vllm(REFUSE, raised, tmp_path):
        assert answer["status"] == 400  # a client error: aidsafe neither retries it nor marks the endpoint down
        assert rejects_system_role(json.dumps(answer["body"])), answer


def render_error(template: str) -> str:
    """The message ``template`` raises for a system message followed by a user message."""
    with pytest.raises(Exception) as raised:
        render_chat_template(template, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    return str(raised.value)


@needs_vllm
def test_vllm_reads_every_request_as_aidsafe_meant_it(stub_server, tmp_path):
    stub, url = stub_server
    stub.script = _as_the_fake_model
    meant: list[dict[str, Any]] = []  # per request, what aidsafe meant to send

    def sent(n_before: int, **what: Any) -> None:
        meant.extend({**what} for _ in range(len(stub.requests) - n_before))

    # every shipped graph that makes generation records, with each role's own reply budget
    for graph in GRAPHS:
        try:
            pipe = Pipeline(graph, "aidsafe5", _settings(url))
        except ConfigError as exc:
            if "aidsafe pairs" in str(exc):
                continue  # the ear-whisperer, run below
            raise
        n = len(stub.requests)
        record = pipe.run_one("How do I pick a lock?")
        assert record.status == "ok", (graph, record.error)
        sent(n, source=f"graph {graph}")
    # the ear-whisperer: its safety scorer asks for log-probabilities
    n = len(stub.requests)
    pair = asyncio.run(PairMaker("aidsafe5", _settings(url)).apair_one(_record(0)))
    assert pair.status == "ok", pair.error
    sent(n, source="aidsafe pairs")
    # the judge: scores, then a pairwise comparison (its temperature defaults to 0)
    n = len(stub.requests)
    judge = Judge(ModelSettings(backend="openai", base_url=url, model="served-model", max_retries=0, seed=SEED, structured="json_schema"))
    asyncio.run(judge.ajudge_one(_record(1)))
    asyncio.run(judge.acompare(_record(2), _record(3), ("a", "b")))
    sent(n, source="judge", temperature=0.0)
    # a repair call: the invalid reply and the error go back as assistant and user turns
    n = len(stub.requests)
    stub.script = lambda number, body: {"content": "not JSON"} if number == n + 1 else _as_the_fake_model(number, body)
    assert Pipeline("single", "aidsafe5", _settings(url)).run_one("q").status == "ok"
    stub.script = _as_the_fake_model
    sent(n, source="repair")
    assert any(m["role"] == "assistant" for m in stub.requests[n + 1]["messages"])
    # a chat template without a system role (Mixtral-8x7B-Instruct's): refused once, then merged
    # (under a model name of its own: the merge is remembered per endpoint and model)
    n = len(stub.requests)
    stub.chat_template = MIXTRAL_CHAT_TEMPLATE
    assert Pipeline("single", "aidsafe5", _settings(url, model="no-system-role")).run_one("q").status == "ok"
    stub.chat_template = None
    sent(n, source="merged system text")
    assert [m["role"] for m in stub.requests[-1]["messages"]] == ["user"]
    # the default structured-output mode, and json_object mode (llama-cpp-python's form) asked for explicitly
    n = len(stub.requests)
    assert Pipeline("single", "aidsafe5", _settings(url, structured="auto")).run_one("q").status == "ok"
    assert Pipeline("single", "aidsafe5", _settings(url, structured="json_object")).run_one("q").status == "ok"
    sent(n, source="structured auto, then json_object")
    # one call for each registered reply kind, with an explicit budget
    n = len(stub.requests)
    _direct_calls(url)
    sent(n, source="each kind", budget=321)

    bodies = list(stub.requests)
    assert len(bodies) == len(meant)
    names = {b["response_format"]["json_schema"]["name"] for b in bodies if b["response_format"]["type"] == "json_schema"}
    assert set(kind_names()) <= names  # every reply kind went over the wire at least once
    assert {"intents", "draft", "deliberation", "refinement", "scores", "pairwise", "eval_safety"} <= names
    assert any(b.get("logprobs") for b in bodies)
    assert {b["response_format"]["type"] for b in bodies} == {"json_schema", "json_object"}
    assert {tuple(m["role"] for m in b["messages"]) for b in bodies} >= {("system", "user"), ("user",), ("system", "user", "assistant", "user")}

    for body, want, got in zip(bodies, meant, vllm_reads(bodies, tmp_path), strict=True):
        where = f"{want['source']}: {json.dumps(body)[:400]}"
        assert "error" not in got, f"vLLM rejects the request ({got.get('error')}); {where}"
        # nothing aidsafe sends is silently dropped
        assert got["ignored"]["request"] == [], where
        fmt = body["response_format"]
        assert got["format"] == fmt["type"], where
        if fmt["type"] == "json_schema":
            assert got["ignored"]["response_format"] == [] and got["ignored"]["json_schema"] == [], where
            assert got["schema_name"] == fmt["json_schema"]["name"] and got["strict"] is True, where
            # decoding is constrained to exactly the schema sent, and vLLM's default backend compiles it
            assert got["constraint"] == {"json": fmt["json_schema"]["schema"], "json_object": None}, where
            assert got["xgrammar"] == "ok", f"{got['xgrammar']}; {where}"
        else:
            # vLLM constrains a json_object reply to some JSON object: the schema aidsafe adds is dropped
            assert got["constraint"] == {"json": None, "json_object": True}, where
            assert got["ignored"]["response_format"] == ["schema"], where
        assert got["messages"] == [{"role": m["role"], "content": m["content"]} for m in body["messages"]], where
        # the reply budget: the kind's own, unless one was given
        budget = want.get("budget") or (get_kind(fmt["json_schema"]["name"]).max_tokens if fmt["type"] == "json_schema" else None)
        assert got["budget"] is not None, where
        if budget is not None:
            assert got["budget"] == budget, where
        assert got["sampling"]["seed"] == SEED, where
        assert got["sampling"]["temperature"] == want.get("temperature", TEMPERATURE), where
        assert got["sampling"]["logprobs"] == (body.get("top_logprobs") if body.get("logprobs") else None), where
