"""The file-job runner with executors: the lock, the remembered configuration, resume, the sidecar
and Ctrl-C exist once in :func:`aidsafe.runner.run_job`; where the items run is an executor.

Checked without Ray: an executor that runs each item in a worker rebuilt from the job's pickled
worker factory and writes whole block files beside the output (as the Ray executor does) gives
``generate``, ``judge`` (records, pairs, pairwise) and ``pairs`` the same records as the local
executor, with the same resume and configuration check; every job's ``crashed`` record is a
valid, failed record of its kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aidsafe import Pipeline
from aidsafe.cli import main
from aidsafe.errors import ConfigMismatchError
from aidsafe.judge import Judge
from aidsafe.models import ModelSettings
from aidsafe.outputs import block_name, blocks_dir, merge_blocks, read_records, read_sidecar, scan_blocks, write_block
from aidsafe.pairs import PairMaker, PairRecord
from aidsafe.records import Record
from aidsafe.runner import Executed, JobOptions, Prior, Work

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
        blocks = scan_blocks(blocks_dir(output), model=job.record_model, what=job.what)
        return Prior(done=blocks.done, failed=blocks.failed, prompts=blocks.prompts, files=blocks.files, last_run=blocks.last_run)

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
                records = [await worker.run(item, worker.models) for item in batch]
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
        run_figures = summary["run"] if isinstance(summary, dict) else summary.as_dict()["run"]
        assert run_figures["engine"] == "blocks" and not blocks_dir(out).exists()
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
