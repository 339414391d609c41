"""The file-job runner with executors: the lock, the remembered configuration, resume, the sidecar
and Ctrl-C exist once in :func:`aidsafe.runner.run_job`; where the items run is an executor.

Checked without Ray: an executor that runs each item in a worker rebuilt from the job's pickled
worker factory and writes whole block files beside the output (as the Ray executor does) gives
``generate``, ``judge`` (records, pairs, pairwise) and ``pairs`` the same records as the local
executor, with the same resume and configuration check; every job's ``crashed`` record is a
valid, failed record of its kind.

Every record says what wrote it (``written_by``: the record format, the job, its configuration's
digest, the digests of the records it was made from), so that a resume whose sidecar is lost
still refuses another configuration, an output of two configurations is refused with the line of
the first odd record, and files written before (without it) are read and resumed as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aidsafe import Pipeline
from aidsafe.cli import main
from aidsafe.errors import ConfigMismatchError, InputError
from aidsafe.judge import Judge, JudgeSummary
from aidsafe.judge.schema import JudgedRecord
from aidsafe.models import ModelSettings
from aidsafe.outputs import (
    block_name,
    blocks_dir,
    merge_blocks,
    read_records,
    read_sidecar,
    scan_blocks,
    scan_output,
    sidecar_path,
    write_block,
    write_sidecar,
)
from aidsafe.pairs import PairMaker, PairRecord, PairsSummary
from aidsafe.records import RECORD_FORMAT, Record, WrittenBy, config_sha256
from aidsafe.runner import Executed, JobOptions, Prior, Work, blocks_prior

PROMPTS = [f"How do I keep item number {i} safe at home?" for i in range(6)]


class BlockExecutor:
    """Items run by a worker rebuilt from the job's pickled worker factory (as in another process),
    ``batch`` at a time; each batch's records are one block file, merged into the output at the end."""

    name = "blocks"
    wants_ids = True

    def __init__(self, batch: int = 2, stop_after: int | None = None) -> None:
        self.batch = batch
        self.stop_after = stop_after
        """Batches to run before a simulated Ctrl-C (None: all)."""
        self.factories: list[Any] = []
        self.job: Any = None

    def prior(self, job: Any, output: Path) -> Prior:
        return blocks_prior(job, output)

    def discard(self, output: Path) -> None:
        for block in blocks_dir(output).glob("*"):
            block.unlink()

    def session(self, job: Any, output: Path, needed: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def execute(self, job: Any, pending: Callable[[], Iterator[Any]], work: Work) -> Executed:
        folder = blocks_dir(work.output)
        self.job = job
        if work.todo:
            factory = pickle.loads(pickle.dumps(job.worker_factory(lambda settings: settings)))
            self.factories.append(factory)
            worker = factory()
            assert {"job": worker.name, **worker.config()} == {"job": job.name, **job.config()}  # the driver's configuration
            folder.mkdir(exist_ok=True)
            items = [item for item in factory.items() if factory.item_id(item) not in work.skip]
            for number, start in enumerate(range(0, len(items), self.batch)):
                if self.stop_after is not None and number >= self.stop_after:
                    raise KeyboardInterrupt
                batch = items[start:start + self.batch]
                records = [work.stamp.apply(await worker.run(item, worker.models), item) for item in batch]  # as the Ray actors do
                name = block_name(work.prior.last_run + 1, [factory.item_id(item) for item in batch])
                write_block(folder / name, [record.model_dump_json() for record in records])
                work.meter.add(len(records), sum(bool(worker.failed(r)) for r in records), sum(worker.tokens(r) for r in records))
            await worker.models.aclose()
        merged = merge_blocks(work.output, folder, model=job.record_model, what=job.what)
        return Executed(done=len(work.pending_ids & merged.ids), extra={"engine": self.name, "blocks_merged": merged.parts})

    def written(self, work: Work) -> int:
        blocks = scan_blocks(blocks_dir(work.output), model=self.job.record_model, what=self.job.what, clean=False)
        return len(work.pending_ids & (blocks.done | blocks.failed))

    def where(self, output: Path) -> str:
        return f"{output} and {blocks_dir(output)}/"


def _by_id(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len({row["id"] for row in rows}) == len(rows), "an id appears twice"
    return {row["id"]: row for row in rows}


def _generation(tmp_path: Path, name: str = "gen.jsonl", graph: str = "aidsafe", behaviour: str = "agree") -> Path:
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"g{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)), encoding="utf-8")
    out = tmp_path / name
    assert main(["generate", str(src), "-o", str(out), "--backend", "fake", "--model", behaviour, "--graph", graph, "--no-progress"]) == 0
    return out


def test_generate_through_another_executor_gives_the_local_records_and_resumes(tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"g{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)), encoding="utf-8")
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    out, local = tmp_path / "out.jsonl", tmp_path / "local.jsonl"
    # a run stopped by Ctrl-C after its first batch: the block is safe, the runner says so
    from aidsafe.errors import JobInterrupted

    with pytest.raises(JobInterrupted) as stopped:
        pipe.generate(src, out, JobOptions(progress=False, executor=BlockExecutor(stop_after=1)))
    assert f"in {out} and {blocks_dir(out)}/" in str(stopped.value) and stopped.value.safe == 2 and stopped.value.total == 6
    assert len(list(blocks_dir(out).glob("*.jsonl"))) == 1 and (read_sidecar(out) or {})["complete"] is False
    # the same command resumes: the block's ids are skipped, the rest run, all merged, each once
    summary = pipe.generate(src, out, JobOptions(progress=False, executor=BlockExecutor()))
    pipe.generate(src, local, progress=False)
    assert _by_id(out) == _by_id(local)
    assert summary.run["skipped"] == 2 and summary.run["prompts"] == 4 and summary.run["engine"] == "blocks"
    assert summary.run["blocks_merged"] == 3 and not blocks_dir(out).exists()
    sidecar, local_sidecar = read_sidecar(out) or {}, read_sidecar(local) or {}
    assert sidecar["complete"] is True and sidecar["config"] == local_sidecar["config"]
    # another configuration is refused by the runner, whatever the executor
    other = Pipeline("single", "aidsafe5", ModelSettings(backend="fake"))
    with pytest.raises(ConfigMismatchError, match=r"graph\.name: 'aidsafe' -> 'single'"):
        other.generate(src, out, JobOptions(progress=False, executor=BlockExecutor()))


def test_judge_and_pairs_through_another_executor_give_the_local_records(tmp_path: Path) -> None:
    gen = _generation(tmp_path)
    other = _generation(tmp_path, name="other.jsonl", graph="single", behaviour="default")
    judge = Judge(ModelSettings(backend="fake"))
    executor = BlockExecutor()
    runs = {
        "judged": lambda out, options: judge.ajudge_file(gen, out, options),
        "pairwise": lambda out, options: judge.apairwise_file(gen, other, out, options),
        "pairs": lambda out, options: PairMaker("aidsafe5", ModelSettings(backend="fake", model="agree")).apairs_file(gen, out, options),
    }
    for name, run in runs.items():
        out, local = tmp_path / f"{name}.jsonl", tmp_path / f"{name}_local.jsonl"
        summary = asyncio.run(run(out, JobOptions(progress=False, executor=executor)))
        asyncio.run(run(local, JobOptions(progress=False)))
        assert _by_id(out) == _by_id(local), name
        # every front door gives a summary object (as_dict, what the sidecar holds), of its job's class
        assert isinstance(summary, PairsSummary if name == "pairs" else JudgeSummary), name
        run_figures = summary.as_dict()["run"]
        assert run_figures["engine"] == "blocks" and not blocks_dir(out).exists()
        assert {k: v for k, v in (read_sidecar(out) or {}).items() if k in summary.as_dict()} == summary.as_dict()
        assert (read_sidecar(out) or {})["config"] == (read_sidecar(local) or {})["config"]
    # both sides of each pair judged
    pairs = tmp_path / "pairs.jsonl"
    judged_pairs, judged_pairs_local = tmp_path / "jp.jsonl", tmp_path / "jp_local.jsonl"
    asyncio.run(judge.ajudge_pairs_file(pairs, judged_pairs, JobOptions(progress=False, executor=executor)))
    asyncio.run(judge.ajudge_pairs_file(pairs, judged_pairs_local, progress=False))
    assert _by_id(judged_pairs) == _by_id(judged_pairs_local)
    # each factory took absolute input paths (a worker elsewhere reads them)
    assert all(Path(p).is_absolute() for factory in executor.factories for p in factory.inputs)


def test_every_jobs_crashed_record_is_a_failed_record_of_its_kind(tmp_path: Path) -> None:
    from aidsafe.judge.judge import _PairJob, _PairScoreJob, _ScoreJob
    from aidsafe.pairs.job import _PairsJob
    from aidsafe.pipeline import _GenerateJob

    gen = _generation(tmp_path)
    pairs_out = tmp_path / "pairs.jsonl"
    maker = PairMaker("aidsafe5", ModelSettings(backend="fake", model="agree"))
    asyncio.run(maker.apairs_file(gen, pairs_out, progress=False))
    record = next(iter(read_records(gen, Record)))
    pair = next(iter(read_records(pairs_out, PairRecord)))
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    judge = Judge(ModelSettings(backend="fake"))
    generate = _GenerateJob(pipe, tmp_path / "prompts.jsonl", "prompt", "id", None, None, False)
    jobs: list[tuple[Any, Any]] = [
        (generate, next(iter(generate.items(None)))),
        (_ScoreJob(judge, gen, None), record),
        (_PairScoreJob(judge, pairs_out, None), pair),
        (_PairJob(judge, gen, gen, None), (record, record)),
        (_PairsJob(maker, gen, None), record),
    ]
    for job, item in jobs:
        crashed = job.crashed(item, "the worker died")
        line = crashed.model_dump_json()
        model = job.record_model
        again = model.model_validate_json(line) if isinstance(model, type) else crashed
        assert job.failed(again), job.name
        assert str(again.id) == job.item_id(item)


# --- the records say what wrote them: written_by (format, job, configuration digest, inputs' digests) ---


def _stamps(path: Path) -> list[Any]:
    return [row.get("written_by") for row in _by_id(path).values()]


def _digest(path: Path) -> str:
    """The digest of the configuration an output's sidecar remembers."""
    return config_sha256((read_sidecar(path) or {})["config"])


def test_every_jobs_records_carry_the_format_and_their_configurations_digest_wherever_they_run(tmp_path: Path) -> None:
    gen = _generation(tmp_path)
    other = _generation(tmp_path, name="other.jsonl", graph="single", behaviour="default")
    assert _digest(gen) != _digest(other)
    stamp = {"format": RECORD_FORMAT, "job": "generate", "config": _digest(gen), "inputs": []}
    assert _stamps(gen) == [stamp] * len(PROMPTS) and (read_sidecar(gen) or {})["written_by"] == stamp
    pairs = tmp_path / "pairs.jsonl"
    maker = PairMaker("aidsafe5", ModelSettings(backend="fake", model="agree"))
    asyncio.run(maker.apairs_file(gen, pairs, progress=False))
    judge = Judge(ModelSettings(backend="fake"))
    runs: dict[str, tuple[Callable[[Path, JobOptions], Any], list[str]]] = {
        "pairs": (lambda out, options: maker.apairs_file(gen, out, options), [_digest(gen)]),
        "judge": (lambda out, options: judge.ajudge_file(gen, out, options), [_digest(gen)]),
        "judge-pairs": (lambda out, options: judge.ajudge_pairs_file(pairs, out, options), [_digest(pairs)]),
        "pairwise": (lambda out, options: judge.apairwise_file(gen, other, out, options), [_digest(gen), _digest(other)]),
    }
    for name, (run, inputs) in runs.items():
        out, local = tmp_path / f"{name}_blocks.jsonl", tmp_path / f"{name}_local.jsonl"
        asyncio.run(run(out, JobOptions(progress=False, executor=BlockExecutor())))
        asyncio.run(run(local, JobOptions(progress=False)))
        stamp = {"format": RECORD_FORMAT, "job": name, "config": _digest(local), "inputs": inputs}
        assert _stamps(local) and _stamps(local) == [stamp] * len(_stamps(local)), name
        assert _by_id(out) == _by_id(local), name  # workers elsewhere stamp as the local executor does
        assert (read_sidecar(local) or {})["written_by"] == stamp == (read_sidecar(out) or {})["written_by"], name
    # aidsafe judge on a generated file: its records and its sidecar name the generated file's configuration
    judged = tmp_path / "judged.jsonl"
    assert main(["judge", str(gen), "-o", str(judged), "--backend", "fake", "--no-progress"]) == 0
    assert {s["inputs"][0] for s in _stamps(judged)} == {_digest(gen)}
    assert (read_sidecar(judged) or {})["written_by"]["inputs"] == [_digest(gen)]
    # a record read back keeps it, a model-made one (outside a file job) has none
    assert next(iter(read_records(judged, JudgedRecord))).written_by == WrittenBy(**_stamps(judged)[0])
    assert Pipeline("single", "aidsafe5", ModelSettings(backend="fake")).run(["hello"])[0].written_by is None


def _generate(src: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress", *extra]


def _prompts(tmp_path: Path) -> Path:
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"g{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)), encoding="utf-8")
    return src


def test_a_resume_whose_sidecar_is_lost_refuses_another_configuration_by_the_records_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    assert main(_generate(src, out, "--limit", "3")) == 0
    digest = _digest(out)
    sidecar_path(out).unlink()
    before = out.read_bytes()
    capsys.readouterr()
    assert main(_generate(src, out, "--graph", "single")) == 2
    err = capsys.readouterr().err
    other = config_sha256({"job": "generate", **Pipeline("single", "aidsafe5", ModelSettings(backend="fake")).compiled.config()})
    assert f"its records carry configuration sha256 {digest} (from {out}:1), this run's is {other}" in err
    assert f"its summary sidecar {sidecar_path(out)} is gone" in err and "the differences cannot be listed" in err
    assert out.read_bytes() == before and not sidecar_path(out).exists()  # untouched
    # the same configuration continues (the sidecar comes back), another one with --overwrite starts over
    assert main(_generate(src, out)) == 0
    assert len(_stamps(out)) == len(PROMPTS) and {s["config"] for s in _stamps(out)} == {digest} and _digest(out) == digest
    assert main(_generate(src, out, "--graph", "single", "--overwrite")) == 0
    assert {s["config"] for s in _stamps(out)} == {other}


def test_the_judge_refuses_another_configuration_with_its_sidecar_lost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = _generation(tmp_path)
    judged = tmp_path / "judged.jsonl"
    judge = ["judge", str(gen), "-o", str(judged), "--backend", "fake", "--no-progress"]
    assert main([*judge, "--limit", "2"]) == 0
    sidecar_path(judged).unlink()
    capsys.readouterr()
    assert main([*judge, "--model", "garbage"]) == 2
    assert "the differences cannot be listed" in capsys.readouterr().err
    assert main(judge) == 0 and len(_stamps(judged)) == len(PROMPTS)


def test_blocks_of_an_interrupted_run_with_its_sidecar_lost_are_checked_too(tmp_path: Path) -> None:
    from aidsafe.errors import JobInterrupted

    src, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    with pytest.raises(JobInterrupted):
        pipe.generate(src, out, JobOptions(progress=False, executor=BlockExecutor(stop_after=1)))
    (block,) = blocks_dir(out).glob("*.jsonl")
    sidecar_path(out).unlink()
    other = Pipeline("single", "aidsafe5", ModelSettings(backend="fake"))
    with pytest.raises(ConfigMismatchError, match=rf"from {re.escape(str(block))}:1\), this run's is .* is gone"):
        other.generate(src, out, JobOptions(progress=False, executor=BlockExecutor()))
    assert block.exists() and out.read_bytes() == b""  # untouched: the records are all in the block
    pipe.generate(src, out, JobOptions(progress=False, executor=BlockExecutor()))
    assert len(_stamps(out)) == len(PROMPTS) and not blocks_dir(out).exists()


def _restamp(path: Path, line: int, **stamp: Any) -> None:
    """Change ``written_by`` of one line of ``path`` (1-based)."""
    rows = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(rows[line - 1])
    row["written_by"] = {**row["written_by"], **stamp}
    rows[line - 1] = json.dumps(row)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_records_of_two_configurations_in_one_output_are_refused_with_the_first_odd_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    assert main(_generate(src, out, "--limit", "4")) == 0
    digest, odd = _digest(out), "0" * 64
    _restamp(out, 3, config=odd)
    _restamp(out, 4, config=odd)
    before = out.read_bytes()
    capsys.readouterr()
    assert main(_generate(src, out)) == 2  # with its sidecar: the line still names the odd record
    err = capsys.readouterr().err
    assert f"{out}:3: written with configuration sha256 {odd}, but {out}:1 with {digest}" in err
    sidecar_path(out).unlink()
    assert main(_generate(src, out)) == 2 and f"{out}:3:" in capsys.readouterr().err
    assert out.read_bytes() == before
    with pytest.raises(InputError) as info:
        scan_output(out, repair=False)
    assert info.value.file == str(out) and info.value.line == 3


def test_records_of_the_sidecars_configuration_with_another_digest_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sidecar that is not the output's (copied from another): the records' digest wins."""
    src, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    assert main(_generate(src, out, "--limit", "2")) == 0
    for line in (1, 2):
        _restamp(out, line, config="f" * 64)
    capsys.readouterr()
    assert main(_generate(src, out)) == 2
    assert "so the sidecar is not this output's" in capsys.readouterr().err


def test_records_of_a_newer_format_are_not_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    assert main(_generate(src, out, "--limit", "2")) == 0
    _restamp(out, 2, format=RECORD_FORMAT + 1, since="a later aidsafe")  # a key this one does not know is kept, not refused
    assert len(list(read_records(out, Record))) == 2  # readable all the same
    capsys.readouterr()
    assert main(_generate(src, out)) == 2
    assert f"holds records of format {RECORD_FORMAT + 1}, written by a newer aidsafe" in capsys.readouterr().err


def test_outputs_written_before_records_carried_written_by_stay_readable_and_resumable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    assert main(_generate(src, out, "--limit", "3")) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    out.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "written_by"}) + "\n" for row in rows), encoding="utf-8")
    sidecar = read_sidecar(out) or {}
    write_sidecar(out, {k: v for k, v in sidecar.items() if k != "written_by"})  # an older sidecar: the configuration alone
    assert [r.written_by for r in read_records(out, Record)] == [None] * 3
    # the sidecar check as before: another configuration refused, its differences listed
    capsys.readouterr()
    assert main(_generate(src, out, "--graph", "single")) == 2
    assert "graph.name: 'aidsafe' -> 'single'" in capsys.readouterr().err
    # the same one resumes: the old records stay as they were, the new ones carry the stamp
    assert main(_generate(src, out)) == 0
    stamps = [row.get("written_by") for row in map(json.loads, out.read_text(encoding="utf-8").splitlines())]
    assert stamps[:3] == [None] * 3 and {s["config"] for s in stamps[3:]} == {_digest(out)} and len(stamps) == len(PROMPTS)
    # ... and judged, paired and merged as before
    judged = tmp_path / "judged.jsonl"
    assert main(["judge", str(out), "-o", str(judged), "--backend", "fake", "--no-progress"]) == 0
    assert [s["inputs"] for s in _stamps(judged)] == [[]] * 3 + [[_digest(out)]] * 3
    assert main(["merge", str(out), "-o", str(tmp_path / "merged.jsonl")]) == 0


def test_the_local_engine_resumes_an_interrupted_block_run_and_overwrite_removes_its_blocks(tmp_path: Path) -> None:
    """Blocks an interrupted Ray-style run left in OUT.parts/ are resumed by the local engine (never
    run again, merged into OUT, each id once), and --overwrite deletes them with the output."""
    from aidsafe.errors import JobInterrupted

    src, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    with pytest.raises(JobInterrupted):
        pipe.generate(src, out, JobOptions(progress=False, executor=BlockExecutor(stop_after=1)))
    (block,) = blocks_dir(out).glob("*.jsonl")
    in_block = {json.loads(line)["id"]: line for line in block.read_text(encoding="utf-8").splitlines()}
    assert in_block and out.read_bytes() == b""
    summary = pipe.generate(src, out, JobOptions(progress=False))  # the local engine
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"g{i}" for i in range(len(PROMPTS)))  # each id once
    assert not blocks_dir(out).exists()
    for record in records:  # the block's records were kept, not run again
        if record["id"] in in_block:
            assert json.dumps(record, sort_keys=True) == json.dumps(json.loads(in_block[record["id"]]), sort_keys=True)
    run = summary.as_dict()["run"]
    assert (run["prompts"], run["skipped"]) == (len(PROMPTS) - len(in_block), len(in_block))  # only the others ran

    with pytest.raises(JobInterrupted):
        pipe.generate(src, tmp_path / "again.jsonl", JobOptions(progress=False, executor=BlockExecutor(stop_after=1)))
    assert blocks_dir(tmp_path / "again.jsonl").is_dir()
    pipe.generate(src, tmp_path / "again.jsonl", JobOptions(progress=False, overwrite=True))
    assert not blocks_dir(tmp_path / "again.jsonl").exists()
    assert len((tmp_path / "again.jsonl").read_text(encoding="utf-8").splitlines()) == len(PROMPTS)
