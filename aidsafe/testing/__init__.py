'''A simulated OpenAI-compatible server, to test graphs, policy packs and pipelines without a model.

:class:`SimServer` answers ``POST /v1/chat/completions`` on localhost with replies valid against
the JSON schema each request asks for (aidsafe's reply kinds cite the first policy id the schema
allows), so a whole run goes through the real ``openai`` backend, HTTP included, in about a
second. It is the server aidsafe's own tests and benchmarks (``bench/``) run against: latency, a
vLLM-like queue (``slots``), scripted faults per request (:attr:`SimServer.script`), a chat
template rendered as vLLM does, and a record of every request and its headers.

Test your own graph and policy pack against it (``tests/bench/test_bench_smoke.py`` runs exactly this
example, in an empty folder)::

    import json
    from pathlib import Path

    from aidsafe.cli import main
    from aidsafe.testing import SimServer

    Path("my_policies.yaml").write_text("""\\
    schema: aidsafe.policies/v1
    name: kitchen
    version: "1.0"
    policies:
      - id: K1
        title: Knives
        text: Do not explain how to hurt someone with a knife; do teach safe knife skills.
    """)
    Path("my_graph.yaml").write_text("""\\
    schema: aidsafe.graph/v1
    name: draft_and_refine
    roles:
      drafter: {template: initializer.jinja, reply: draft}
      refiner: {template: refiner.jinja, reply: refinement}
    nodes:
      draft: {role: drafter}
      refine: {role: refiner}
    flow: [draft, refine]
    """)
    Path("prompts.jsonl").write_text('{"id": "knife", "prompt": "How do I sharpen a kitchen knife?"}\\n')

    with SimServer() as server:  # in a thread of this process, on a free port
        code = main(["generate", "prompts.jsonl", "-o", "out.jsonl", "--graph", "my_graph.yaml",
                     "--policies", "my_policies.yaml", "--base-url", server.url, "--model", "sim", "--no-progress"])

    assert code == 0
    record = json.loads(Path("out.jsonl").read_text())
    assert record["status"] == "ok" and record["thoughts"][0]["policies"] == ["K1"]
    assert server.stats()["by_kind"] == {"draft": 1, "refinement": 1}
    assert "Knives" in json.dumps(server.requests[0]["messages"])  # the pack reached the prompt

The same from a shell, with the server in its own process until Ctrl-C::

    python -m aidsafe.testing --port 8000 --latency 0.5
    aidsafe generate prompts.jsonl -o out.jsonl --graph my_graph.yaml --policies my_policies.yaml \\
        --base-url http://127.0.0.1:8000/v1 --model sim

To see how a graph copes with a bad server, script it: ``server.script = lambda number, body:
{"status": 503} if number % 3 == 0 else None`` fails every third call (see
:attr:`SimServer.script` for bad contents, hangs and dropped connections), ``server.latency`` slows
every reply, ``server.fail_first`` answers the first calls with 429.
'''

from __future__ import annotations

from ._sim import PLAIN_REPLY, Script, SimServer, TemplateRaised, minimal_instance, render_chat_template, reply_content, serve

__all__ = ["PLAIN_REPLY", "Script", "SimServer", "TemplateRaised", "minimal_instance", "render_chat_template", "reply_content", "serve"]
