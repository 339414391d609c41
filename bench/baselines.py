"""The baselines: aidsafe's four model calls per prompt made without aidsafe.

- plain ``openai.AsyncOpenAI``: the four calls of each prompt in turn, prompts concurrently;
- a bare LangGraph ``StateGraph`` of the same shape whose nodes make those calls;
- the naive loop: every call of every prompt one after another with the sync ``openai.OpenAI``.

Their messages and ``response_format`` are rendered beforehand (``rendered_calls``), so they do no
templating, validation or record writing.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypedDict

from aidsafe.testing import SimServer
from bench.common import KINDS, MODEL, ROLES, make_pipeline

__all__ = ["bare_langgraph", "naive_loop", "rendered_calls", "run_baseline"]

Calls = list[dict[str, list[dict[str, str]]]]
"""Per prompt, each role's chat messages."""


def rendered_calls(prompts: list[str]) -> tuple[Calls, dict[str, dict[str, Any]]]:
    """Per prompt, the messages of the four roles (``pipe.messages``), and each role's response_format.

    Rendered before any timing: the baselines do no templating, validation or record writing.
    """
    from aidsafe.kinds import reply_schema

    pipe = make_pipeline()
    ids = pipe.compiled.policies.ids
    formats = {}
    for role in ROLES:
        kind = KINDS[role]
        # the refiner of a prompt whose first agent agreed sees one thought (the draft's)
        schema = reply_schema(kind, ids, {"thought_count": 1}) if kind == "refinement" else pipe.binding(role).schema
        formats[role] = {"type": "json_schema", "json_schema": {"name": kind, "schema": schema, "strict": True}}
    messages = [{role: pipe.messages(role, p) for role in ROLES} for p in prompts]
    return messages, formats


def _openai_async(url: str, concurrency: int) -> Any:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=max(concurrency, 10), max_keepalive_connections=max(concurrency, 10))
    return openai.AsyncOpenAI(
        base_url=url, api_key="EMPTY", max_retries=0, timeout=60.0,
        http_client=httpx.AsyncClient(limits=limits, timeout=60.0),
    )


async def _plain(url: str, msgs: Calls, formats: dict[str, Any], concurrency: int) -> None:
    client = _openai_async(url, concurrency)
    sem = asyncio.Semaphore(concurrency)

    async def one(calls: dict[str, Any]) -> None:
        async with sem:
            for role in ROLES:
                resp = await client.chat.completions.create(
                    model=MODEL, messages=calls[role], response_format=formats[role], max_tokens=768
                )
                json.loads(resp.choices[0].message.content)

    try:
        await asyncio.gather(*(one(m) for m in msgs))
    finally:
        await client.close()


class _BareState(TypedDict, total=False):
    i: int
    intents: dict[str, Any]
    draft: dict[str, Any]
    deliberation: dict[str, Any]
    refinement: dict[str, Any]


def bare_langgraph(client: Any, msgs: Calls, formats: dict[str, Any]) -> Any:
    """A bare LangGraph ``StateGraph`` of the same shape: intent -> init -> agent -> refine."""
    from langgraph.graph import END, START, StateGraph

    def node(role: str) -> Any:
        key = KINDS[role]

        async def run(state: _BareState) -> dict[str, Any]:
            resp = await client.chat.completions.create(
                model=MODEL, messages=msgs[state["i"]][role], response_format=formats[role], max_tokens=768
            )
            return {key: json.loads(resp.choices[0].message.content)}

        return run

    g: StateGraph = StateGraph(_BareState)
    names = {"intent": "intent", "initializer": "init", "agent_1": "agent", "refiner": "refine"}
    for role, name in names.items():
        g.add_node(name, node(role))
    g.add_edge(START, "intent")
    g.add_edge("intent", "init")
    g.add_edge("init", "agent")
    g.add_edge("agent", "refine")
    g.add_edge("refine", END)
    return g.compile()


async def _bare(url: str, msgs: Calls, formats: dict[str, Any], concurrency: int) -> None:
    client = _openai_async(url, concurrency)
    graph = bare_langgraph(client, msgs, formats)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await graph.ainvoke({"i": i})

    try:
        await asyncio.gather(*(one(i) for i in range(len(msgs))))
    finally:
        await client.close()


def run_baseline(kind: str, server: SimServer, msgs: Calls, formats: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """One timed run of baseline ``kind`` (``plain`` or ``langgraph``) over every prompt of ``msgs``."""
    coro = {"plain": _plain, "langgraph": _bare}[kind]
    before = server.stats()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(coro(server.url, msgs, formats, concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = server.stats()
    calls = after["requests"] - before["requests"]
    return {
        "wall_s": wall, "cpu_s": cpu, "calls": calls, "calls_per_s": calls / wall,
        "cpu_ms_per_call": 1e3 * cpu / calls if calls else float("nan"),
        "server_cpu_s": after["cpu_s"] - before["cpu_s"],
    }


def naive_loop(url: str, msgs: Calls, formats: dict[str, Any]) -> None:
    """What a researcher writes first: every call of every prompt, one after another, sync client."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=60.0)
    try:
        for calls in msgs:
            for role in ROLES:
                resp = client.chat.completions.create(model=MODEL, messages=calls[role], response_format=formats[role], max_tokens=768)
                json.loads(resp.choices[0].message.content)
    finally:
        client.close()
