"""The clients of the peer benchmark, each run as a whole process by ``bench/peers.py``.

    python bench/peer_clients.py bare       CALLS.jsonl OUT.jsonl --url URL --concurrency 64
    python bench/peer_clients.py curator    CALLS.jsonl OUT.jsonl --url URL --concurrency 64
    python bench/peer_clients.py distilabel CALLS.jsonl OUT.jsonl --url URL --concurrency 64

``CALLS.jsonl`` holds, per prompt, the chat requests aidsafe makes for it (``messages`` and
``response_format``), rendered beforehand by ``peers.py``, so no client here renders templates.
aidsafe itself is not run from here: ``peers.py`` runs its CLI, ``aidsafe generate``, as a user does.

- ``bare``: ``asyncio`` + ``openai.AsyncOpenAI``, a semaphore of ``--concurrency`` prompts, each
  prompt's calls in turn; the reply is parsed as JSON and written. The floor any framework is
  measured against.
- ``curator``: a ``bespokelabs.curator.LLM`` with ``response_format`` a pydantic model (the reply of
  the single-call graph), backend ``openai``, ``max_concurrent_requests`` = ``--concurrency``.
- ``distilabel``: a ``Pipeline`` of ``LoadDataFromDicts`` -> ``ChatGeneration`` with ``OpenAILLM``,
  ``input_batch_size`` = ``--concurrency`` (distilabel sends one batch's calls concurrently). The
  JSON schema goes in ``extra_body`` (``OpenAILLM.agenerate`` types ``response_format`` as a flat
  ``dict[str, str]``), so the request body is the same as the others'.

Curator and distilabel answer only the single-call graph (one structured call per prompt); they
need the extra ``[peers]``, best in a virtual environment of its own (see ``bench/README.md``).
This module imports nothing from aidsafe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def read_calls(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# -- bare asyncio + openai ----------------------------------------------------------------------


async def _bare(rows: list[dict[str, Any]], out: Path, url: str, concurrency: int, model: str) -> int:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = openai.AsyncOpenAI(
        base_url=url, api_key="EMPTY", max_retries=2, timeout=60.0, http_client=httpx.AsyncClient(limits=limits, timeout=60.0)
    )
    sem = asyncio.Semaphore(concurrency)
    done = 0
    with out.open("w", encoding="utf-8") as fh:

        async def one(row: dict[str, Any]) -> None:
            nonlocal done
            async with sem:
                replies = []
                for call in row["calls"]:
                    resp = await client.chat.completions.create(
                        model=model, messages=call["messages"], response_format=call["response_format"], max_tokens=768
                    )
                    replies.append(json.loads(resp.choices[0].message.content or "null"))
            fh.write(json.dumps({"id": row["id"], "replies": replies}) + "\n")
            done += 1

        try:
            await asyncio.gather(*(one(r) for r in rows))
        finally:
            await client.close()
    return done


def run_bare(rows: list[dict[str, Any]], out: Path, url: str, concurrency: int, model: str) -> int:
    return asyncio.run(_bare(rows, out, url, concurrency, model))


# -- Bespoke Curator ----------------------------------------------------------------------------


def run_curator(rows: list[dict[str, Any]], out: Path, url: str, concurrency: int, model: str) -> int:
    os.environ.setdefault("TELEMETRY_ENABLED", "false")  # its telemetry would try the network
    os.environ.setdefault("CURATOR_CACHE_DIR", tempfile.mkdtemp(prefix="curator-"))
    # Curator counts tokens with tiktoken's cl100k_base, which tiktoken downloads on first use;
    # litellm (a Curator dependency) ships that file, so point tiktoken at it: no network.
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(bundled))
    from bespokelabs import curator
    from pydantic import BaseModel

    class Thought(BaseModel):
        text: str
        policies: list[str]

    class Draft(BaseModel):
        thoughts: list[Thought]
        response: str

    class Generate(curator.LLM):
        response_format = Draft

        def prompt(self, row: dict[str, Any]) -> Any:
            return row["calls"][0]["messages"]

        def parse(self, row: dict[str, Any], response: Draft) -> dict[str, Any]:
            return {"id": row["id"], "reply": response.model_dump()}

    llm = Generate(
        model_name=model,
        backend="openai",
        generation_params={"max_tokens": 768},
        backend_params={
            "base_url": url, "api_key": "EMPTY", "max_concurrent_requests": concurrency,
            "max_requests_per_minute": 1_000_000, "max_tokens_per_minute": 1_000_000_000, "max_retries": 2,
        },
    )
    result = llm([{"id": r["id"], "calls": r["calls"]} for r in rows])
    dataset = getattr(result, "dataset", result)
    n = 0
    with out.open("w", encoding="utf-8") as fh:
        for rec in dataset:
            fh.write(json.dumps({"id": rec["id"], "reply": rec["reply"]}) + "\n")
            n += 1
    return n


# -- distilabel ---------------------------------------------------------------------------------


def run_distilabel(rows: list[dict[str, Any]], out: Path, url: str, concurrency: int, model: str) -> int:
    os.environ.setdefault("DISTILABEL_CACHE_DIR", tempfile.mkdtemp(prefix="distilabel-"))
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import ChatGeneration

    fmt = rows[0]["calls"][0]["response_format"]
    with Pipeline(name="peer-bench") as pipeline:
        load = LoadDataFromDicts(data=[{"id": r["id"], "messages": r["calls"][0]["messages"]} for r in rows], batch_size=concurrency)
        chat = ChatGeneration(
            llm=OpenAILLM(
                model=model, base_url=url, api_key="EMPTY", max_retries=2, timeout=60,  # type: ignore[arg-type]
                generation_kwargs={"max_new_tokens": 768, "extra_body": {"response_format": fmt}},
            ),
            input_batch_size=concurrency,
        )
        load >> chat
    distiset = pipeline.run(use_cache=False)
    n = 0
    with out.open("w", encoding="utf-8") as fh:
        for rec in distiset["default"]["train"]:
            fh.write(json.dumps({"id": rec["id"], "reply": json.loads(rec["generation"] or "null")}) + "\n")
            n += 1
    return n


CLIENTS = {"bare": run_bare, "curator": run_curator, "distilabel": run_distilabel}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("client", choices=sorted(CLIENTS))
    parser.add_argument("calls", type=Path, help="JSONL of rendered calls per prompt (written by peers.py)")
    parser.add_argument("output", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", default="sim")
    args = parser.parse_args(argv)
    rows = read_calls(args.calls)
    n = CLIENTS[args.client](rows, args.output, args.url, args.concurrency, args.model)
    print(json.dumps({"client": args.client, "records": n}), file=sys.stderr)


if __name__ == "__main__":
    main()
