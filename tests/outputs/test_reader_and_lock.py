"""Every file of records has one reader with crash repair, and an output has one live run at a time
(the output lock: a second run refused at once, a ``kill -9``'d holder not blocking)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import write_prompts

from aidsafe import ModelSettings, Pipeline
from aidsafe.cli import main
from aidsafe.errors import AidsafeError, InputError
from aidsafe.judge import JudgedRecord, PairVerdict
from aidsafe.judge.schema import judged_or_plain
from aidsafe.outputs import OutputLock, lock_path, read_records, scan_output
from aidsafe.records import Record

pytestmark = pytest.mark.usefixtures("clean_env")  # no AIDSAFE_* variable of the calling shell changes what a test sees


# --- one reader for every file of records --------------------------------------------------


def _verdict(i: int) -> str:
    return PairVerdict(id=f"x{i}", a="a.jsonl", b="b.jsonl", winner="a", verdicts=["a", "a"]).model_dump_json()


def test_a_corrupt_line_in_the_middle_of_pairwise_verdicts_is_refused_never_dropped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_prompts(tmp_path / "p.jsonl", 4)
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
    src, out = write_prompts(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
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
