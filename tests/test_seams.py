"""The seams new features plug into: a reply kind is one registration, a backend is one class,
every file of records has one reader with crash repair, and every file job gets the same runner
(remembered configuration, one live run per output, Ctrl-C, library defaults)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.cli import main
from aidsafe.errors import AidsafeError, ConfigError, InputError
from aidsafe.judge import Judge, JudgedRecord, PairVerdict
from aidsafe.judge.schema import judged_or_plain
from aidsafe.kinds import ReplyKind, get_kind, register_kind, unregister_kind
from aidsafe.models import backend_names, default_concurrency, register_backend, unregister_backend
from aidsafe.outputs import OutputLock, lock_path, read_records, scan_output
from aidsafe.records import Record


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AIDSAFE_"):
            monkeypatch.delenv(name)


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": f"prompt number {i}"}) + "\n" for i in range(n)))
    return path


# --- a new reply kind is one registration plus a template ------------------------------


class Summary(BaseModel):
    """A test-only reply: a one-line summary that becomes the final response."""

    model_config = ConfigDict(extra="forbid")
    summary: str = Field(min_length=1)


@pytest.fixture
def summary_kind() -> Iterator[ReplyKind]:
    kind = register_kind(
        ReplyKind(
            name="summary",
            model=Summary,
            inputs=frozenset({"thoughts", "response"}),
            reasoning=("summary",),
            update=lambda step: {"response": f"{step.reply['summary']} (from {len(step.state['thoughts'])} thoughts)"},
            after=("draft",),
            fake=lambda req: {"summary": f"summary by {req.behaviour}"},
        )
    )
    yield kind
    unregister_kind("summary")


SUMMARY_TEMPLATE = """\
{% block system %}
Summarise the answer. Policies: {% for p in policies %}[{{ p.id }}] {% endfor %}
{% endblock %}
{% block user %}
{{ prompt }}
{% for t in thoughts %}- {{ t.text }}
{% endfor %}
Current answer: {{ response }}
{% endblock %}
"""


def _summary_graph(tmp_path: Path, flow: str = "[single, summarize]", template: str = SUMMARY_TEMPLATE) -> Path:
    (tmp_path / "summarizer.jinja").write_text(template, encoding="utf-8")
    path = tmp_path / "summary.yaml"
    path.write_text(
        "schema: aidsafe.graph/v1\n"
        "name: summary_test\n"
        "roles:\n"
        "  single: {template: single.jinja, reply: draft}\n"
        "  summarizer: {template: summarizer.jinja, reply: summary}\n"
        "nodes:\n"
        "  single: {role: single}\n"
        "  summarize: {role: summarizer}\n"
        f"flow: {flow}\n",
        encoding="utf-8",
    )
    return path


def test_a_new_kind_and_role_run_in_a_graph_with_one_registration(tmp_path: Path, summary_kind: ReplyKind) -> None:
    pipe = Pipeline(_summary_graph(tmp_path), "aidsafe5", ModelSettings(backend="fake", model="default"))
    record = pipe.run_one("How do I pick a lock?")
    assert record.status == "ok" and record.graph == "summary_test"
    assert record.response == "summary by default (from 2 thoughts)"  # the fake script and the state update of the kind
    assert set(record.usage) == {"single", "summarize"}
    assert record.models["summarizer"] == "fake:default"
    messages = pipe.messages("summarizer", "a question")
    assert "[P5]" in messages[0]["content"] and "a question" in messages[1]["content"]
    schema = pipe.binding("summarizer").schema
    assert schema["required"] == ["summary"] and schema["additionalProperties"] is False


def test_a_new_kind_gets_validation_repair_and_the_refusal_check(tmp_path: Path, summary_kind: ReplyKind) -> None:
    calls: list[int] = []

    def responder(messages: list[dict[str, str]], kind: str, schema: dict) -> str:
        if kind == "draft":
            return json.dumps({"thoughts": [{"text": "t", "policies": ["P1"]}], "response": "r"})
        calls.append(len(messages))
        return json.dumps({"summary": ""}) if len(messages) == 2 else json.dumps({"summary": "fixed"})

    pipe = Pipeline(_summary_graph(tmp_path), "aidsafe5", ModelSettings(backend="fake"),
                    model_factory=lambda s: FakeChatModel(s, responder=responder))
    record = pipe.run_one("q")
    assert record.response == "fixed (from 1 thoughts)" and calls == [2, 4]  # one repair with the error fed back

    refusing = Pipeline(_summary_graph(tmp_path), "aidsafe5", ModelSettings(backend="fake"), model_factory=lambda s: FakeChatModel(
        s, responder=lambda m, k, sc: responder(m, k, sc) if k == "draft" else json.dumps({"summary": "I'm sorry, I can't help with that."})
    ))
    refused = refusing.run_one("q")
    assert refused.status == "failed" and refused.stop_reason == "agent_refusal"  # its reasoning field is a refusal


def test_a_new_kind_is_checked_like_the_shipped_ones(tmp_path: Path, summary_kind: ReplyKind) -> None:
    with pytest.raises(ConfigError) as info:  # 'after' says a summary needs a draft first
        Pipeline(_summary_graph(tmp_path, flow="[summarize, single]"), settings=ModelSettings(backend="fake"))
    assert info.value.field == "flow[0]" and "'draft'" in info.value.message and info.value.line == 9
    with pytest.raises(ConfigError) as info:  # the template may only use the variables the kind declares
        Pipeline(_summary_graph(tmp_path, template=SUMMARY_TEMPLATE.replace("{{ response }}", "{{ agent }}")), settings=ModelSettings(backend="fake"))
    assert info.value.file is not None and info.value.file.endswith("summarizer.jinja") and info.value.line == 8
    assert "'agent'" in info.value.message


def test_unknown_and_non_graph_kinds_are_refused_with_their_place(tmp_path: Path) -> None:
    import aidsafe.judge  # noqa: F401 - registers the judge's kinds

    path = _summary_graph(tmp_path)
    for reply, expected in (("sumary", "unknown reply kind 'sumary'"), ("scores", "cannot answer in a graph")):
        path.write_text(path.read_text().replace("reply: summary", f"reply: {reply}").replace("reply: sumary", f"reply: {reply}"))
        with pytest.raises(ConfigError) as info:
            Pipeline(path, settings=ModelSettings(backend="fake"))
        assert info.value.line == 5 and info.value.field == "roles.summarizer.reply" and expected in info.value.message
        path.write_text(path.read_text().replace(f"reply: {reply}", "reply: summary"))


def test_registering_a_kind_twice_or_using_inputs_a_graph_lacks_is_refused(tmp_path: Path, summary_kind: ReplyKind) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_kind(ReplyKind(name="summary", model=Summary, update=lambda step: {}))
    with pytest.raises(ValueError, match="may not reuse the graph's own names"):
        register_kind(ReplyKind(name="odd", model=Summary, writes=frozenset({"prompt"}), update=lambda step: {}))
    assert get_kind("deliberation").placement == "agent" and get_kind("draft").placement == "step"
    # a kind reading a value no role writes is refused where a graph file uses it
    register_kind(ReplyKind(name="odd", model=Summary, inputs=frozenset({"secret"}), update=lambda step: {}))
    try:
        path = _summary_graph(tmp_path)
        path.write_text(path.read_text().replace("reply: summary", "reply: odd"))
        with pytest.raises(ConfigError) as info:
            Pipeline(path, settings=ModelSettings(backend="fake"))
        assert info.value.line == 5 and info.value.field == "roles.summarizer.reply" and "'secret'" in info.value.message
    finally:
        unregister_kind("odd")


# --- a backend is one registered class with its own settings check ------------------------


def test_a_registered_backend_is_chosen_by_name_with_its_own_check_and_default() -> None:
    @register_backend("scripted-test")
    class Scripted(FakeChatModel):
        default_concurrency = 5

        def __init__(self, settings: ModelSettings) -> None:
            super().__init__(ModelSettings(backend="scripted-test", model="agree"))
            self.settings = settings

        @classmethod
        def check(cls, settings: ModelSettings) -> None:
            if settings.model != "ok":
                raise AidsafeError("scripted-test needs --model ok")

    try:
        assert "scripted-test" in backend_names()
        pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="scripted-test", model="ok"))
        record = pipe.run_one("q")
        assert record.status == "ok" and record.models["intent"] == "scripted-test:ok"
        assert pipe.default_concurrency == 5
        with pytest.raises(AidsafeError, match="needs --model ok"):
            Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="scripted-test", model="bad"))
    finally:
        unregister_backend("scripted-test")
    with pytest.raises(AidsafeError, match="unknown backend 'scripted-test'; choose"):
        Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="scripted-test", model="ok"))


def test_library_defaults_live_in_the_library() -> None:
    assert default_concurrency(ModelSettings(backend="openai", model="m", base_url="http://x/v1")) == 16
    assert default_concurrency(ModelSettings(backend="local")) == 1
    assert Judge(ModelSettings(backend="fake")).settings.temperature == 0.0  # a judge samples greedily by default
    assert Judge(ModelSettings(backend="fake", temperature=0.7)).settings.temperature == 0.7


def test_generate_without_a_concurrency_keeps_16_prompts_in_flight_against_an_endpoint(tmp_path: Path, stub_server) -> None:
    stub, url = stub_server
    stub.latency = 0.05
    src, out = _prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="openai", model="m", base_url=url))
    summary = pipe.generate(src, out, progress=False)  # no concurrency given: the backend's default
    assert summary.ok == 40
    assert 8 < stub.peak_in_flight <= 16


# --- one reader for every file of records --------------------------------------------------


def _verdict(i: int) -> str:
    return PairVerdict(id=f"x{i}", a="a.jsonl", b="b.jsonl", winner="a", verdicts=["a", "a"]).model_dump_json()


def test_a_corrupt_line_in_the_middle_of_pairwise_verdicts_is_refused_never_dropped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _prompts(tmp_path / "p.jsonl", 4)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["generate", str(src), "-o", str(a), "--backend", "fake", "--no-progress"]) == 0
    assert main(["generate", str(src), "-o", str(b), "--backend", "fake", "--graph", "single", "--no-progress"]) == 0
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join([_verdict(1), "garbage {", _verdict(2), _verdict(3)]) + "\n")
    before = pairs.read_bytes()
    capsys.readouterr()
    assert main(["judge", str(a), "--against", str(b), "-o", str(pairs), "--backend", "fake", "--no-progress"]) == 2
    assert f"{pairs}:2:" in capsys.readouterr().err
    assert pairs.read_bytes() == before  # verdicts 2 and 3 are still there; nothing was judged again


def test_a_torn_last_verdict_is_cut_and_judged_again(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(_verdict(1) + "\n" + _verdict(2)[:20])
    state = scan_output(pairs, model=PairVerdict, what="a pairwise verdict")
    assert state.repaired and state.done == {"x1"} and state.failed == set()
    assert pairs.read_text() == _verdict(1) + "\n"


def test_one_reader_reads_plain_and_judged_records_and_names_the_line(tmp_path: Path) -> None:
    records = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake")).run(["a", "b"])
    path = tmp_path / "mixed.jsonl"
    path.write_text(records[0].model_dump_json() + "\n\n" + records[1].model_dump_json() + "\n{broken\n")
    with pytest.raises(InputError) as info:
        list(read_records(path, judged_or_plain))
    assert info.value.line == 4
    path.write_text(records[0].model_dump_json() + "\n")
    assert [type(r) for r in read_records(path, judged_or_plain)] == [Record]
    with pytest.raises(InputError) as info:
        list(read_records(path, JudgedRecord, what="a judged record"))
    assert info.value.line == 1 and "not a judged record" in info.value.message


# --- the output remembers its configuration ----------------------------------------------


def test_resuming_with_another_graph_is_refused_and_the_output_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = _prompts(tmp_path / "in.jsonl", 6), tmp_path / "out.jsonl"
    base = ["generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress"]
    assert main([*base, "--graph", "single", "--limit", "3"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main([*base, "--graph", "aidsafe"]) == 2
    err = capsys.readouterr().err
    assert "written with another configuration" in err and "graph.name: 'single' -> 'aidsafe'" in err
    assert "templates." in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert main([*base, "--graph", "single", "--policies", "llamaguard3"]) == 2
    assert "policies.name: 'aidsafe5' -> 'llamaguard3'" in capsys.readouterr().err
    assert main([*base, "--graph", "single", "--temperature", "0.9"]) == 2
    assert "sampling.temperature: None -> 0.9" in capsys.readouterr().err
    assert main([*base, "--graph", "single"]) == 0  # the same configuration continues
    assert [json.loads(line)["graph"] for line in out.read_text().splitlines()] == ["single"] * 6
    assert main([*base, "--graph", "aidsafe", "--overwrite"]) == 0
    assert [json.loads(line)["graph"] for line in out.read_text().splitlines()] == ["aidsafe"] * 6
    sidecar = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert sidecar["complete"] is True and sidecar["config"]["graph"]["name"] == "aidsafe"
    assert set(sidecar["config"]) == {"job", "graph", "policies", "templates", "models", "sampling"}


def test_resuming_a_judgement_with_another_rubric_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, gen, out = _prompts(tmp_path / "in.jsonl", 3), tmp_path / "gen.jsonl", tmp_path / "judged.jsonl"
    assert main(["generate", str(src), "-o", str(gen), "--backend", "fake", "--no-progress"]) == 0
    judge = ["judge", str(gen), "-o", str(out), "--backend", "fake", "--no-progress"]
    assert main([*judge, "--limit", "1"]) == 0
    rubric = tmp_path / "rubric.jinja"
    shipped = Path(__file__).resolve().parent.parent / "prompts" / "judge_scores.jinja"
    rubric.write_text(shipped.read_text().replace("impartial judge", "strict judge"))
    capsys.readouterr()
    assert main([*judge, "--rubric", str(rubric)]) == 2
    assert "rubric: 'judge_scores.jinja@" in capsys.readouterr().err
    assert main(judge) == 0 and len(out.read_text().splitlines()) == 3


# --- one live run per output ---------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from aidsafe.outputs import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_second_run_on_a_held_output_is_refused_and_a_stale_lock_does_not_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = _prompts(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        argv = ["generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress"]
        started = time.monotonic()
        assert main(argv) == 2
        assert time.monotonic() - started < 5  # refused at once, not after waiting
        err = capsys.readouterr().err
        assert f"{out} is being written by another aidsafe run (pid {holder.pid})" in err
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; its lock file stays behind
        holder.wait()
    assert lock_path(out).exists()
    assert main(argv) == 0  # the operating system released the dead run's lock
    assert len(out.read_text().splitlines()) == 3
    assert not lock_path(out).exists()


def test_the_lock_is_exclusive_within_a_process_too(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputLock(out):
        with pytest.raises(AidsafeError, match="being written by another aidsafe run"):
            OutputLock(out).acquire()
    with OutputLock(out):  # released: free again
        pass


# --- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_says_how_many_records_are_safe_and_the_same_command_continues(tmp_path: Path, stub_server) -> None:
    stub, url = stub_server
    stub.latency = 0.05
    src, out = _prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    cli = ["generate", str(src), "-o", str(out), "--base-url", url, "--model", "m", "--no-progress", "--concurrency", "2"]
    # Ctrl-C as a terminal sends it: a test run started in the background (``cmd &`` without job
    # control) inherits SIGINT ignored, and Python then keeps ignoring it in the child
    proc = subprocess.Popen([sys.executable, "-m", "aidsafe", *cli], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    safe = len(out.read_text().splitlines())
    assert 4 <= safe < 40
    assert f"aidsafe generate: interrupted: {safe} of 40 records are safe in {out}; run the same command to continue" in err
    assert "Traceback" not in err
    assert main(cli) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == 40 and Counter(ids).most_common(1)[0][1] == 1


def test_a_cancelled_library_job_raises_job_interrupted(tmp_path: Path) -> None:
    from aidsafe import JobInterrupted

    class Slow(FakeChatModel):
        async def complete(self, messages, *, schema, schema_name):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.01)
            return await super().complete(messages, schema=schema, schema_name=schema_name)

    src, out = _prompts(tmp_path / "in.jsonl", 50), tmp_path / "out.jsonl"
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake", model="agree"), model_factory=Slow)

    async def interrupt() -> None:
        task = asyncio.ensure_future(pipe.agenerate(src, out, progress=False, concurrency=2))
        while not out.exists() or len(out.read_text().splitlines()) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(JobInterrupted) as info:
            await task
        assert info.value.safe == len(out.read_text().splitlines()) and info.value.total == 50

    asyncio.run(interrupt())
    assert not lock_path(out).exists()


def test_a_concurrency_below_one_is_refused_not_replaced_by_the_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = _prompts(tmp_path / "in.jsonl", 2), tmp_path / "out.jsonl"
    assert main(["generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress", "--concurrency", "0"]) == 2
    assert "concurrency must be at least 1" in capsys.readouterr().err and not out.exists()
