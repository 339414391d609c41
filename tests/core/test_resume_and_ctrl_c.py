"""Every file job gets the same runner: the output remembers its configuration (a resume with another
one is refused, the output untouched), Ctrl-C says how many records are safe and the same command
continues, and a concurrency below one is refused."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_prompts

from aidsafe import FakeChatModel, ModelSettings, Pipeline
from aidsafe.cli import main
from aidsafe.outputs import lock_path

pytestmark = pytest.mark.usefixtures("clean_env")  # no AIDSAFE_* variable of the calling shell changes what a test sees


# --- the output remembers its configuration ----------------------------------------------


def test_resuming_with_another_graph_is_refused_and_the_output_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = write_prompts(tmp_path / "in.jsonl", 6), tmp_path / "out.jsonl"
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
    src, gen, out = write_prompts(tmp_path / "in.jsonl", 3), tmp_path / "gen.jsonl", tmp_path / "judged.jsonl"
    assert main(["generate", str(src), "-o", str(gen), "--backend", "fake", "--no-progress"]) == 0
    judge = ["judge", str(gen), "-o", str(out), "--backend", "fake", "--no-progress"]
    assert main([*judge, "--limit", "1"]) == 0
    rubric = tmp_path / "rubric.jinja"
    shipped = Path(__file__).resolve().parents[2] / "prompts" / "judge_scores.jinja"
    rubric.write_text(shipped.read_text().replace("impartial judge", "strict judge"))
    capsys.readouterr()
    assert main([*judge, "--rubric", str(rubric)]) == 2
    assert "rubric: 'judge_scores.jinja@" in capsys.readouterr().err
    assert main(judge) == 0 and len(out.read_text().splitlines()) == 3


# --- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_says_how_many_records_are_safe_and_the_same_command_continues(tmp_path: Path, stub_server) -> None:
    stub, url = stub_server
    stub.latency = 0.05
    src, out = write_prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
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

    src, out = write_prompts(tmp_path / "in.jsonl", 50), tmp_path / "out.jsonl"
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
    src, out = write_prompts(tmp_path / "in.jsonl", 2), tmp_path / "out.jsonl"
    assert main(["generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress", "--concurrency", "0"]) == 2
    assert "concurrency must be at least 1" in capsys.readouterr().err and not out.exists()
