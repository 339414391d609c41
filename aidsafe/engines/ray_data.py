"""``aidsafe generate --engine ray``: the same records as the local engine, run on Ray Data.

How a run goes (``OUT`` is the JSONL output, ``OUT.parts/`` its block folder):

1. **The driver** (the ``aidsafe`` process) takes ``OUT.lock``, refuses a resume with another
   configuration (the sidecar's, as the local engine does), repairs a torn last line of ``OUT``,
   reads the ids already written (in ``OUT`` and in every block of ``OUT.parts/``), and validates
   the whole input once, before any model call, with aidsafe's own readers (an input whose ids
   name other prompts than those records is refused: :class:`~aidsafe.pairing.ResumeCheck`).
2. **The read** is a Ray Data datasource that streams the input with the same readers (so every
   id is the one ``--engine local`` gives: the id field, else the record number) and leaves
   out the ids already written; it yields blocks of ``--ray-batch-size`` prompts.
3. **The actors**: ``map_batches`` over a pool of ``--ray-actors`` actors. Each builds the
   pipeline once (graph, policy pack, models, from the same options), with the shared response
   cache ``OUT.cache.sqlite``, and runs each batch through the async graph with at most
   ``--concurrency`` prompts in flight in that actor (batches overlap, so no slot idles at the
   tail of a batch). A finished batch is written as one block file
   ``OUT.parts/r<run>-<digest of its ids>.jsonl``: a temporary name, fsync, then a rename. The
   name is a function of the run and the batch's ids, so a batch that Ray runs again replaces
   its block instead of adding one; calls the killed attempt made are answered from the cache.
   Each actor gets ``ceil(max_in_flight / actors)`` calls in flight per endpoint (the run's
   ``--max-in-flight`` and each endpoint's own ``max_in_flight``, at least 1), so the pool
   together keeps an endpoint's limit, not ``actors`` times it.
4. **The merge**, once every batch is written: ``OUT`` and the blocks (oldest first) are joined
   into ``OUT`` (a temporary file, then a rename) with each id exactly once: an ``ok`` record is
   kept over any other copy, else the latest copy (a ``--retry-failed`` rerun) wins. Then the
   blocks are deleted. A crash at any point loses nothing written: the blocks (or the merged
   ``OUT``) hold every finished batch, and the next run skips their ids and merges again.
5. **The summary** (the same :class:`~aidsafe.summary.RunSummary` over every record of
   ``OUT``, with ``run.engine = "ray"``) goes to ``OUT.summary.json`` and is returned.

**An actor that dies** (a native crash, the OOM killer): Ray restarts it (``max_restarts`` -1)
and runs its batches again, at most ``max_batch_retries`` times each (Ray's ``max_task_retries``;
default 3). Each batch keeps a journal, ``OUT.parts/.<block>.journal``, of the attempts and of
the prompts each one started and finished. An attempt after a death runs the prompts that were in
flight then one at a time, alone in the actor, before the others; a prompt whose actor died while
it ran alone is not run again: it gets a ``failed`` record (``error.kind: worker_crash``, the
batch named), as do, on the last attempt, the prompts still under suspicion. So a prompt that
kills its worker every time costs its own record, never the run, and every other prompt's record
lands (``--retry-failed`` runs those prompts again). If Ray still gives up on a batch (its
retries spent on deaths the journal cannot pin on a prompt), the run stops with an error naming
the prompts in flight at those deaths, after merging every finished block into ``OUT``.

Ray runs where ``RAY_ADDRESS`` points (a cluster), or on a local cluster started for the run.
With Ray Client (``RAY_ADDRESS=ray://head:10001``) this process is not a worker of the cluster,
and Ray Data drives a pipeline only from one: a task on the cluster (no CPU reserved) drives it
then, and this process follows the blocks it writes for the progress bar, then merges them.
Actors write the blocks and the cache, and read the input, at the paths the driver names: on a
cluster ``OUT``'s folder and the input must be on a file system that every node and the driver
share, at the same absolute paths (and the SQLite cache then wants a local-disk-like one;
``--no-cache`` turns it off). With a cluster that this run did not start (``RAY_ADDRESS``, a Ray
Client address ``ray://host:10001``, or a ``ray.init`` of the caller), a probe task on every
node checks this before any model call: it reads a marker the driver wrote beside ``OUT`` (a
random token), writes one back that the driver must see, and finds the input; if any node
cannot, the run is refused naming the path and the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AidsafeError, ConfigError, InputError, JobInterrupted
from ..graph.state import initial_state
from ..inputs import PromptItem, read_prompts, report_problems
from ..models import ModelFactory, ModelSettings, ResponseCache, make_model
from ..outputs import (
    OUTPUT_FORMATS,
    OutputLock,
    atomic_text,
    convert_output,
    read_record_lines,
    read_records,
    scan_output,
    write_sidecar,
)
from ..pairing import ResumeCheck
from ..pipeline import Pipeline, record_from_state
from ..policies import PolicySet
from ..records import Record
from ..runner import JobRun, cache_path, config_differences, refuse_other_config, wire_postfix
from ..summary import RunSummary, total_tokens

try:
    import pyarrow as pa
    import ray
    import ray.data
    import ray.exceptions
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask
except ImportError as exc:  # pragma: no cover - the [ray] extra is missing
    raise AidsafeError(f"--engine ray needs Ray Data: pip install 'aidsafe[ray]' ({exc})") from None

if TYPE_CHECKING:
    from ray.data.context import DataContext

__all__ = ["RayOptions", "check_shared_paths", "generate_ray", "merge_parts", "parts_dir", "per_actor_settings", "read_input"]

"""Input files read as Parquet (aidsafe's own readers take every other format)."""

_PART = re.compile(r"^r(\d+)-[0-9a-f]+\.jsonl$")
JOURNAL_SUFFIX = ".journal"
"""A batch's journal: ``OUT.parts/.<block name>.journal`` (see :class:`BatchJournal`)."""


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine spreads the work (the records do not depend on it)."""

    actors: int = 2
    """Actors in the pool, each with its own pipeline and ``concurrency`` prompts in flight."""
    batch_size: int = 32
    """Prompts per batch: the unit of work Ray hands an actor, and of one block file."""
    actor_cpus: float | None = None
    """CPUs Ray reserves per actor; None: 1 for the embedded local model, else 0.5 (I/O-bound)."""
    max_batch_retries: int = 3
    """Times a batch whose actor died is run again (Ray's ``max_task_retries``); a prompt that
    kills its actor is recorded as failed (``worker_crash``) within this bound."""


def per_actor_settings(settings: ModelSettings, actors: int) -> ModelSettings:
    """``settings`` with the calls in flight per endpoint shared out among ``actors`` actors:
    ``ceil(limit / actors)`` each, at least 1 (the run's ``max_in_flight`` and each endpoint's
    own), so that together they keep the endpoint's limit (at most ``actors - 1`` over it, less
    than twice it). More actors than a limit allows calls is refused: each actor needs one call in
    flight, so together they would exceed it by as many times as there are actors per call."""
    limits = [settings.max_in_flight, *(e.max_in_flight for e in settings.endpoints if e.max_in_flight is not None)]
    if actors > min(limits):
        raise ConfigError(f"--ray-actors {actors} is more than the {min(limits)} calls in flight an endpoint allows "
                          "(--max-in-flight, or max_in_flight in the endpoints file): use at most that many actors")

    def share(limit: int) -> int:
        return max(1, -(-limit // actors))

    endpoints = tuple(
        e.model_copy(update={"max_in_flight": share(e.max_in_flight)}) if e.max_in_flight is not None else e for e in settings.endpoints
    )
    return dataclasses.replace(settings, max_in_flight=share(settings.max_in_flight), endpoints=endpoints)


def parts_dir(records_path: str | os.PathLike[str]) -> Path:
    """The block folder of a JSONL output: ``out.jsonl`` -> ``out.jsonl.parts``."""
    path = Path(records_path)
    return path.with_name(path.name + ".parts")


# --- input ---------------------------------------------------------------------------------


def read_input(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    id_field: str = "id",
    limit: int | None = None,
    lenient: bool = False,
    problems: list[InputError] | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[PromptItem]:
    """The prompts ``aidsafe generate`` runs, streamed: aidsafe's readers (JSONL, CSV, text, a
    saved Hugging Face dataset folder, Parquet: the local engine's ids); then the
    shard, as the local engine takes it (every n-th prompt starting at i)."""
    source = os.fspath(path)
    items = read_prompts(source, prompt_field=prompt_field, id_field=id_field, limit=limit, lenient=lenient, problems=problems)
    for index, item in enumerate(items):
        if shard is None or index % shard[1] == shard[0]:
            yield item


def _todo_blocks(read: Callable[[], Iterator[PromptItem]], skip: frozenset[str], rows: int) -> Iterator[pa.Table]:
    """The read task: the input's prompts without the ids already written, ``rows`` per block."""
    ids: list[str] = []
    prompts: list[str] = []
    lines: list[int] = []
    sources: list[str] = []

    def block() -> pa.Table:
        return pa.table({"id": ids, "prompt": prompts, "line": lines, "source": sources})

    for item in read():
        if item.id in skip:
            continue
        ids.append(item.id)
        prompts.append(item.prompt)
        lines.append(item.line)
        sources.append(item.source)
        if len(ids) >= rows:
            yield block()
            ids, prompts, lines, sources = [], [], [], []
    if ids:
        yield block()


class _PromptSource(Datasource):
    """A Ray Data datasource over an aidsafe input: one read task that streams the file (the ids
    depend on the position in it) and yields blocks as it goes."""

    def __init__(self, read: Callable[[], Iterator[PromptItem]], skip: frozenset[str], rows: int) -> None:
        self._read = read
        self._skip = skip
        self._rows = rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: DataContext | None = None
    ) -> list[ReadTask]:
        read_fn = functools.partial(_todo_blocks, self._read, self._skip, self._rows)
        known = {f.name for f in dataclasses.fields(BlockMetadata)}  # Ray < 2.46 kept the schema here
        metadata = BlockMetadata(**{name: None for name in ("num_rows", "size_bytes", "schema", "input_files", "exec_stats") if name in known})
        return [ReadTask(read_fn, metadata)]


# --- blocks --------------------------------------------------------------------------------


def part_name(run: int, ids: list[str]) -> str:
    """The block file of one batch: the same run and ids always give the same name."""
    digest = hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"r{run:04d}-{digest}.jsonl"


def write_part(path: Path, lines: list[str]) -> None:
    """Write a block atomically: a temporary file (unique to this process), fsync, rename."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("w", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@dataclass
class PartsState:
    """What the block folder of an output holds."""

    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    prompts: dict[str, str] = field(default_factory=dict)
    """Each block record's prompt key, by id (to check a resumed input, as ``OutputState.prompts``)."""
    files: int = 0
    last_run: int = 0


def scan_parts(folder: Path, *, clean: bool = True) -> PartsState:
    """Ids in the blocks of ``folder`` (each block is whole: blocks are written atomically);
    with ``clean``, the temporary files that a killed writer left, and the journals of batches
    that never finished (a new run starts their attempts afresh), are removed."""
    state = PartsState()
    if not folder.is_dir():
        return state
    for temp in [*folder.glob(".*.tmp"), *folder.glob(f".*{JOURNAL_SUFFIX}")] if clean else ():
        temp.unlink(missing_ok=True)
    for part in sorted(folder.glob("*.jsonl")):
        scanned = scan_output(part, repair=False, prompts=True)
        state.done |= scanned.done
        state.failed |= scanned.failed
        for record_id, key in scanned.prompts.items():
            state.prompts.setdefault(record_id, key)
        state.files += 1
        match = _PART.match(part.name)
        if match:
            state.last_run = max(state.last_run, int(match.group(1)))
    state.failed -= state.done
    return state


@dataclass
class Merged:
    """What :func:`merge_parts` did."""

    ids: set[str]
    """Every id in the merged output."""
    parts: int
    """Block files merged (and deleted)."""
    duplicates: int
    """Copies of an id left out (a batch that Ray ran twice, a failed record run again)."""


def merge_parts(records_path: Path, folder: Path) -> Merged:
    """Join ``records_path`` and the blocks of ``folder`` into ``records_path``, each id once.

    Sources are read in order (the output, then the blocks by name: by run, oldest first). Of
    the copies of an id, the first ``ok`` one is kept, else the last one. The output is
    replaced atomically; then the blocks are deleted. Memory grows with the number of ids, not
    of records.
    """
    parts = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    sources = ([records_path] if records_path.exists() else []) + parts
    chosen: dict[str, tuple[int, int, bool]] = {}  # id -> (source, line number, ok)
    duplicates = 0
    for index, source in enumerate(sources):
        for line, record in read_record_lines(source, Record):
            previous = chosen.get(record.id)
            if previous is not None:
                duplicates += 1
                if previous[2]:
                    continue
            chosen[record.id] = (index, line.number, record.status == "ok")
    keep: dict[int, set[int]] = {}
    for index, number, _ok in chosen.values():
        keep.setdefault(index, set()).add(number)
    if parts:
        with atomic_text(records_path) as out:
            for index, source in enumerate(sources):
                wanted = keep.get(index, set())
                with source.open("rb") as handle:
                    for number, raw in enumerate(handle, start=1):
                        if number in wanted:
                            text = raw.decode("utf-8")
                            out.write(text if text.endswith("\n") else text + "\n")
        for part in parts:
            part.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return Merged(ids=set(chosen), parts=len(parts), duplicates=duplicates)


# --- actors ---------------------------------------------------------------------------------


def journal_path(block: Path) -> Path:
    """The journal of a batch: ``OUT.parts/.<block name>.journal`` (removed once the block is written)."""
    return block.with_name(f".{block.name}{JOURNAL_SUFFIX}")


@dataclass
class JournalHistory:
    """What the journal of a batch says about its earlier attempts (each of which died)."""

    attempts: int = 0
    """Attempts started before this one."""
    suspects: list[str] = field(default_factory=list)
    """Prompts in flight when an attempt died, not finished by any attempt since (input order)."""
    killed_alone: list[str] = field(default_factory=list)
    """Prompts that were running alone in their actor when it died."""


class BatchJournal:
    """The attempts of one batch and the prompts each started (``start``; ``solo``: alone in the
    actor) and finished (``end``): one line each, appended with one ``write`` (a killed process
    loses nothing it wrote; the file lives on the output's file system, so a retry on another
    node reads it too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def history(self) -> JournalHistory:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return JournalHistory()
        attempts: list[tuple[dict[str, bool], set[str]]] = []  # per attempt: started id -> alone; ended ids
        for line in text.splitlines():
            kind, _, rest = line.partition("\t")
            if kind == "attempt":
                attempts.append(({}, set()))
                continue
            if not attempts or kind not in ("start", "solo", "end"):
                continue
            try:
                prompt_id = json.loads(rest)
            except ValueError:  # a torn line
                continue
            if not isinstance(prompt_id, str):
                continue
            started, ended = attempts[-1]
            if kind == "end":
                ended.add(prompt_id)
            else:
                started[prompt_id] = kind == "solo"
        finished = set().union(*(ended for _, ended in attempts)) if attempts else set()
        suspects: dict[str, None] = {}
        killed_alone: dict[str, None] = {}
        for started, ended in attempts:
            for prompt_id, alone in started.items():
                if prompt_id in ended or prompt_id in finished:
                    continue
                (killed_alone if alone else suspects)[prompt_id] = None
        return JournalHistory(
            attempts=len(attempts), suspects=[i for i in suspects if i not in killed_alone], killed_alone=list(killed_alone)
        )

    def note(self, kind: str, prompt_id: str | None = None) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        line = kind if prompt_id is None else f"{kind}\t{json.dumps(prompt_id)}"
        os.write(self._fd, (line + "\n").encode("utf-8", "surrogatepass"))

    def remove(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def crash_suspects(folder: Path) -> list[str]:
    """Prompts in flight when an actor died, per the journals left in ``folder``: batches that
    never finished."""
    found: dict[str, None] = {}
    for path in sorted(folder.glob(f".*{JOURNAL_SUFFIX}")) if folder.is_dir() else ():
        history = BatchJournal(path).history()
        found.update(dict.fromkeys(history.killed_alone + history.suspects))
    return list(found)


class _Gate:
    """Who runs in an actor: prompts share it; a prompt suspected of killing the actor runs
    alone (it waits for the running prompts, and new ones wait for it)."""

    def __init__(self) -> None:
        self._cond: asyncio.Condition | None = None
        self.running = 0
        self.alone = False
        self.waiting = 0

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # made on the actor's event loop
            self._cond = asyncio.Condition()
        return self._cond

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: not self.alone and not self.waiting)
            self.running += 1
        try:
            yield
        finally:
            async with cond:
                self.running -= 1
                cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        cond = self._condition()
        async with cond:
            self.waiting += 1
            try:
                await cond.wait_for(lambda: not self.alone and self.running == 0)
            finally:
                self.waiting -= 1
            self.alone = True
        try:
            yield
        finally:
            async with cond:
                self.alone = False
                cond.notify_all()


@dataclass(frozen=True)
class _WorkerSpec:
    """What an actor needs to build the driver's pipeline and write its blocks."""

    graph: str
    policies: PolicySet
    settings: ModelSettings
    """The driver's, with the calls in flight per endpoint shared out (:func:`per_actor_settings`)."""
    role_models: dict[str, str]
    model_factory: ModelFactory
    config: dict[str, Any]
    concurrency: int
    folder: str
    run: int
    cache: str | None
    cache_read: bool
    max_batch_retries: int = 3


class _PromptWorker:
    """One actor of the pool: a pipeline built once, batches run through its async graph."""

    def __init__(self, spec: _WorkerSpec) -> None:
        self.pipe = Pipeline(spec.graph, spec.policies, spec.settings, role_models=spec.role_models, model_factory=spec.model_factory)
        config = {"job": "generate", **self.pipe.compiled.config()}
        if config != spec.config:  # e.g. a node with other templates or another aidsafe
            listed = "; ".join(config_differences(spec.config, config))
            raise ConfigError(f"a Ray actor built another configuration than the driver: {listed}")
        self.spec = spec
        self.cache = ResponseCache(spec.cache, read=spec.cache_read) if spec.cache else None
        pool = self.pipe.compiled.model_pool
        self.models = pool.cached(self.cache) if self.cache is not None else pool
        self.slots = asyncio.Semaphore(spec.concurrency)
        self.gate = _Gate()

    async def _one(self, item: PromptItem, journal: BatchJournal) -> Record:
        async with self.slots, self.gate.shared():
            journal.note("start", item.id)
            record = await self.pipe.arun_one(item, models=self.models)
            journal.note("end", item.id)
            return record

    async def _alone(self, item: PromptItem, journal: BatchJournal) -> Record:
        async with self.gate.exclusive():
            journal.note("solo", item.id)
            record = await self.pipe.arun_one(item, models=self.models)
            journal.note("end", item.id)
            return record

    def _crashed(self, item: PromptItem, message: str) -> Record:
        state = initial_state(item.id, item.prompt)
        state["error"] = {"stage": "worker", "kind": "worker_crash", "message": message, "raw": None}
        return record_from_state(state, self.pipe.compiled)

    async def _records(self, items: list[PromptItem], name: str, journal: BatchJournal) -> list[Record]:
        """The batch's records. After attempts that died: the prompts that killed their actor
        alone get a ``worker_crash`` record, the others in flight at a death run alone first
        (on the last attempt they get a ``worker_crash`` record too), then the rest as usual."""
        history = journal.history()
        attempt, allowed = history.attempts + 1, self.spec.max_batch_retries + 1
        journal.note("attempt")
        by_id: dict[str, Record] = {}
        tries = f"{history.attempts} attempt(s) of batch {name} died"
        killed_alone, suspects = set(history.killed_alone), set(history.suspects)
        for item in items:
            if item.id in killed_alone:
                by_id[item.id] = self._crashed(item, f"the Ray worker died while this prompt ran alone in it ({tries}); not run again")
            elif item.id in suspects and attempt >= allowed:
                by_id[item.id] = self._crashed(
                    item, f"the Ray worker died with this prompt in flight ({tries}; {allowed} allowed); not run again"
                )
        for item in items:
            if item.id in suspects and item.id not in by_id:
                by_id[item.id] = await self._alone(item, journal)
        rest = [item for item in items if item.id not in by_id]
        for item, record in zip(rest, await asyncio.gather(*(self._one(item, journal) for item in rest)), strict=True):
            by_id[item.id] = record
        return [by_id[item.id] for item in items]

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        """Run one batch, write its block, and yield what the driver counts (an async generator:
        Ray Data runs several batches of an actor at once on the actor's event loop)."""
        items = [PromptItem(id=str(row["id"]), prompt=row["prompt"], source=row["source"], line=int(row["line"])) for row in batch.to_pylist()]
        ids = [item.id for item in items]
        name = part_name(self.spec.run, ids)
        block = Path(self.spec.folder) / name
        journal = BatchJournal(journal_path(block))
        if block.exists():  # an earlier attempt wrote it, then died before Ray heard of it
            records = list(read_records(block, Record))
        else:
            records = await self._records(items, name, journal)
            await asyncio.to_thread(write_part, block, [record.model_dump_json() for record in records])
        journal.remove()
        yield pa.table(
            {
                "id": [record.id for record in records],
                "failed": [record.status == "failed" for record in records],
                "tokens": [total_tokens(record) for record in records],
                "cached": [sum(u.cached for u in record.usage.values()) for record in records],
                "part": [name] * len(records),
                # how this actor's requests travel (json_object fallback, merged system text): the driver's summary says so
                "wire": [json.dumps(self.pipe.compiled.model_pool.wire_notes())] * len(records),
            }
        )


# --- the driver ----------------------------------------------------------------------------


def _check_config(destination: Path, config: dict[str, Any], has_records: bool) -> None:
    """Refuse to resume an output (its records or blocks) written with another configuration."""
    if has_records:
        refuse_other_config(destination, destination, config)


def _portable(graph: str | Path, pipe: Pipeline) -> str:
    """The graph as actors (other processes, other nodes of a shared file system) can load it: a
    shipped name stays a name, a file becomes an absolute path."""
    text = os.fspath(graph)
    shipped = pipe.compiled.path != Path(text).expanduser()  # a name resolves to the package's own file
    return text if shipped else str(pipe.compiled.path.resolve())


class _Meter:
    """Progress bar over batches: done, ok, failed, prompts/s, tokens/s, ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.done = self.failed = self.tokens = self.cached = 0
        self.notes: dict[str, dict[str, Any]] = {}
        """The actors' :meth:`~aidsafe.models.ModelPool.wire_notes`, merged."""
        self.started = time.monotonic()
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="prompt", desc="generate (ray)", dynamic_ncols=True)

    def add(self, batch: pa.Table) -> None:
        if "wire" in batch.column_names and batch.num_rows:
            for key, notes in json.loads(batch.column("wire")[0].as_py()).items():
                self.notes.setdefault(key, {}).update(notes)
        self._count(batch.num_rows, sum(batch.column("failed").to_pylist()), sum(batch.column("tokens").to_pylist()),
                    sum(batch.column("cached").to_pylist()))

    def add_records(self, records: list[Record]) -> None:
        self._count(len(records), sum(r.status == "failed" for r in records), sum(total_tokens(r) for r in records),
                    sum(u.cached for r in records for u in r.usage.values()))

    def _count(self, count: int, failed: int, tokens: int, cached: int) -> None:
        self.done += count
        self.failed += failed
        self.tokens += tokens
        self.cached += cached
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            self.bar.set_postfix(ok=self.done - self.failed, failed=self.failed, tok_s=f"{self.tokens / elapsed:.0f}",
                                 **wire_postfix(self.notes), refresh=False)
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Session:
    """How this run reached Ray."""

    started: bool
    """This call ran ``ray.init`` (and shuts Ray down at the end)."""
    own_cluster: bool
    """A local cluster started for this run: actors share the driver's file system."""
    client: bool = False
    """Ray Client (``ray://``): this process is not a worker of the cluster."""


def _client_mode() -> bool:
    import ray.util.client

    return bool(ray.util.client.ray.is_connected())


def _connect() -> _Session:
    """Join the cluster ``RAY_ADDRESS`` names (or the one the caller joined), or start a local one."""
    if ray.is_initialized() or _client_mode():
        return _Session(started=False, own_cluster=False, client=_client_mode())
    if os.environ.get("RAY_ADDRESS"):
        _init_with_retries(os.environ["RAY_ADDRESS"])
        return _Session(started=True, own_cluster=False, client=_client_mode())
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return _Session(started=True, own_cluster=True)


CLIENT_CONNECT_ATTEMPTS = 3
"""Tries at joining a ``ray://`` address. The head's Ray Client proxy starts one server process per
client; that start sometimes fails ("Starting Ray client server failed"), and a new try gets a new
server."""


def _init_with_retries(address: str) -> None:
    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            ray.init(logging_level=logging.WARNING)
            return
        except ConnectionError as exc:  # ConnectionAbortedError from the Ray Client proxy
            if not address.startswith("ray://") or attempt == CLIENT_CONNECT_ATTEMPTS:
                raise AidsafeError(
                    f"cannot join the Ray cluster at {address} (RAY_ADDRESS) after {attempt} tries: "
                    f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"
                ) from exc
            wait = 2.0 * attempt
            logging.getLogger("aidsafe.ray").warning("joining %s failed (%s); trying again in %.0f s", address, type(exc).__name__, wait)
            time.sleep(wait)


def _probe(marker: str, token: str, reply: str, input_path: str) -> dict[str, Any]:
    """Run on one node of the cluster: does it see the driver's marker (``token`` in ``marker``),
    can it write ``reply`` beside it, and does it see the input? Names the node for errors."""
    import socket

    seen = wrote = False
    try:
        seen = Path(marker).read_text(encoding="utf-8") == token
    except OSError:
        pass
    if seen:
        try:
            Path(reply).write_text(token, encoding="utf-8")
            wrote = True
        except OSError:
            pass
    return {"host": socket.gethostname(), "seen": seen, "wrote": wrote, "input": os.path.exists(input_path)}


def _cluster_nodes() -> list[str]:
    """Ids of the cluster's alive nodes that can run tasks."""
    try:
        return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    except Exception:
        return []


def check_shared_paths(output_dir: Path, name: str, input_path: Path, *, timeout: float = 120.0) -> None:
    """Refuse (before any model call) a cluster whose nodes do not share ``output_dir`` and the
    input with this process at the same absolute paths: with Ray Client (``ray://``) or on a
    cluster of other machines, actors write blocks and the cache, and read the input, on their
    own file system. One probe task per alive node (:func:`_probe`)."""
    import secrets

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(16)
    marker = output_dir.absolute() / f".{name}.probe-{token}"
    marker.write_text(token, encoding="utf-8")
    nodes = _cluster_nodes()
    replies = [marker.with_name(f"{marker.name}.{i}") for i in range(max(len(nodes), 1))]
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    try:
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False) if node else "DEFAULT").remote(
                str(marker), token, str(reply), str(input_path.absolute())
            )
            for node, reply in zip(nodes or [None], replies, strict=True)
        ]
        try:
            results = ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise AidsafeError(f"the Ray cluster did not run the file-system check within {timeout:g} s; is it short of workers?") from None
        except ray.exceptions.RayError as exc:  # e.g. a node without aidsafe
            cause = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
            raise AidsafeError(f"the Ray cluster could not run the file-system check: {cause[0].strip()[:600]}; is aidsafe installed on every node?") from exc
        problems = []
        for result, reply in zip(results, replies, strict=True):
            if not result["seen"]:
                problems.append(f"node {result['host']} does not see {output_dir.absolute()}/ (a marker written there is not there)")
            elif not result["wrote"]:
                problems.append(f"node {result['host']} cannot write in {output_dir.absolute()}/")
            elif not reply.exists():
                problems.append(f"a file node {result['host']} wrote in {output_dir.absolute()}/ is not seen here")
            elif not result["input"]:
                problems.append(f"node {result['host']} does not see the input {input_path.absolute()}")
    finally:
        for path in (marker, *replies):
            path.unlink(missing_ok=True)
    if problems:
        raise AidsafeError(
            "--engine ray: the Ray cluster does not share this machine's files: " + "; ".join(problems[:5])
            + ". Its actors write the blocks and the response cache beside the output and read the input at the same "
            "absolute paths, and this process merges the blocks: put the output and the input on a file system that "
            "every node and this machine mount at the same path, or run aidsafe on the cluster (e.g. with ray job submit)"
        )


def _execute(spec: _WorkerSpec, read: Callable[[], Iterator[PromptItem]], skip: frozenset[str], options: RayOptions,
             meter: _Meter, cpus: float) -> None:
    """Build the Ray Data pipeline (read, actor pool) and drive it to the end."""
    have = ray.cluster_resources().get("CPU", 0.0)
    if options.actors * cpus > have:  # an autoscaling cluster may grow; a fixed one waits forever
        print(
            f"aidsafe generate: warning: {options.actors} actors of {cpus:g} CPU each need {options.actors * cpus:g} CPUs, "
            f"the Ray cluster has {have:g} now; lower --ray-actors if the run does not start",
            file=sys.stderr,
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # aidsafe's own bar counts prompts; Ray's would count blocks
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" lines around the summary
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"
    # the read streams one file and waits on the actors: it reserves no CPU, so that actors holding
    # every CPU cannot starve it (named as this Ray version names it)
    named = "num_cpus" in inspect.signature(ray.data.read_datasource).parameters
    read_cpus: dict[str, Any] = {"num_cpus": 0} if named else {"ray_remote_args": {"num_cpus": 0}}
    dataset = ray.data.read_datasource(_PromptSource(read, skip, options.batch_size), **read_cpus)
    # a dead actor is restarted (Ray Data's pools expect that: max_restarts -1) and each of its batches
    # runs again at most max_batch_retries times (Ray Data's default, -1, would loop forever on a
    # prompt that kills its actor). Ray 2.60 takes these only as **ray_remote_args, which it
    # deprecates without a named replacement: the warning is silenced, and a Ray that no longer takes
    # them keeps its own default, where each actor's journal still ends such a batch within the bound.
    retries: dict[str, Any] = {}
    parameters = inspect.signature(ray.data.Dataset.map_batches).parameters
    if "max_task_retries" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        retries = {"max_restarts": -1, "max_task_retries": options.max_batch_retries}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated", category=DeprecationWarning)
        results = dataset.map_batches(
            _PromptWorker,
            fn_constructor_kwargs={"spec": spec},
            batch_size=options.batch_size,
            batch_format="pyarrow",
            # two batches per actor at a time: one's slow last prompt leaves its slots to the other,
            # and no actor hoards batches an idle one could run
            compute=ray.data.ActorPoolStrategy(size=options.actors, max_tasks_in_flight_per_actor=2),
            num_cpus=cpus,
            **retries,
        )
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        meter.add(batch)


def _execute_on_cluster(spec: _WorkerSpec, read: Callable[[], Iterator[PromptItem]], skip: frozenset[str], options: RayOptions,
                        cpus: float) -> None:
    """A task on the cluster that drives the Ray Data pipeline (for Ray Client, see :func:`_execute_from_client`)."""
    _execute(spec, read, skip, options, _Meter(0, False), cpus)


def _execute_from_client(spec: _WorkerSpec, read: Callable[[], Iterator[PromptItem]], skip: frozenset[str], options: RayOptions,
                         meter: _Meter, cpus: float) -> None:
    """:func:`_execute` over Ray Client (``ray://``). Ray Data drives a pipeline only from a worker
    of the cluster, not from a client, so a task on the cluster does (no CPU reserved); this
    process follows the blocks it writes to the shared folder for the progress bar and its
    figures. Ctrl-C cancels the task (and with it the pipeline and its actors)."""
    task = ray.remote(num_cpus=0, max_retries=0)(_execute_on_cluster)
    ref = task.remote(spec, read, skip, options, cpus)
    folder, prefix = Path(spec.folder), f"r{spec.run:04d}-"
    seen: set[str] = set()
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=1.0)
            for part in sorted(folder.glob(f"{prefix}*.jsonl")):  # whole files: blocks are renamed into place
                if part.name not in seen:
                    seen.add(part.name)
                    meter.add_records(list(read_records(part, Record)))
            if ready:
                ray.get(ref)  # raises what stopped the pipeline
                return
    except KeyboardInterrupt:
        ray.cancel(ref)
        raise


def generate_ray(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    graph: str | Path = "aidsafe",
    policies: str | Path | PolicySet = "aidsafe5",
    settings: ModelSettings | None = None,
    role_models: dict[str, str] | None = None,
    model_factory: ModelFactory = make_model,
    prompt_field: str = "prompt",
    id_field: str = "id",
    limit: int | None = None,
    concurrency: int | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    shard: tuple[int, int] | None = None,
    output_format: str = "jsonl",
    cache: bool = True,
    progress: bool = True,
    lenient: bool = False,
    ray_options: RayOptions | None = None,
) -> RunSummary:
    """:meth:`Pipeline.generate <aidsafe.pipeline.Pipeline.generate>` on Ray Data (see the module
    docstring): the same options, records and summary; ``ray_options`` spreads the work.

    ``concurrency`` is per actor. ``model_factory`` must pickle (actors build their models with
    it). Ctrl-C raises :class:`~aidsafe.errors.JobInterrupted`: the finished batches are safe in
    ``OUT.parts/`` and the same call continues.
    """
    options = ray_options or RayOptions()
    if output_format not in OUTPUT_FORMATS:
        raise AidsafeError(f"unknown output format {output_format!r}; choose {', '.join(OUTPUT_FORMATS)}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise AidsafeError(f"shard must be i/n with 0 <= i < n, got {shard[0]}/{shard[1]}")
    if options.actors < 1 or options.batch_size < 1:
        raise AidsafeError("--ray-actors and --ray-batch-size must be at least 1")
    if options.max_batch_retries < 0:
        raise AidsafeError("--ray-batch-retries must be at least 0")
    settings = settings or ModelSettings()
    pipe = Pipeline(graph, policies, settings, role_models=role_models, model_factory=model_factory)
    concurrency = pipe.default_concurrency if concurrency is None else concurrency
    if concurrency < 1:
        raise AidsafeError("concurrency must be at least 1")
    destination = Path(output_path)
    records_path = destination if output_format == "jsonl" else destination.with_name(destination.name + ".jsonl")
    folder = parts_dir(records_path)
    cache_file = cache_path(records_path)
    config = {"job": "generate", **pipe.compiled.config()}
    read = functools.partial(read_input, prompt_field=prompt_field, id_field=id_field, limit=limit, lenient=lenient, shard=shard)
    with OutputLock(records_path):
        has_records = (records_path.exists() and records_path.stat().st_size > 0) or (folder.is_dir() and any(folder.glob("*.jsonl")))
        if not overwrite:
            _check_config(destination, config, has_records)
        state = scan_output(records_path, repair=True, prompts=True) if not overwrite else None
        parts = scan_parts(folder) if not overwrite else PartsState()
        done = (state.done if state else set()) | parts.done
        failed = ((state.failed if state else set()) | parts.failed) - done
        skip = frozenset(done if retry_failed else done | failed)
        stored = {**parts.prompts, **(state.prompts if state else {})}
        resumed = ResumeCheck(stored, str(input_path), records_path, others=sorted(folder.glob("*.jsonl"))) if stored else None
        problems: list[InputError] = []
        selected: set[str] = set()
        todo = 0
        for item in read(input_path, problems=problems):  # the whole input validated before any model call
            selected.add(item.id)
            todo += item.id not in skip
            if resumed is not None:
                resumed.item(item.id, item.prompt)
        if resumed is not None:  # an input whose ids name other prompts than the records written
            resumed.raise_if_any()
        if problems:
            report_problems(problems)
        session = _connect() if todo else None
        stopped: ray.exceptions.RayError | None = None
        try:
            if session is not None and not session.own_cluster:  # before anything is touched or called
                check_shared_paths(records_path.parent, records_path.name, Path(input_path))
            if overwrite:
                for stale in (records_path, cache_file, Path(f"{cache_file}-wal"), Path(f"{cache_file}-shm")):
                    stale.unlink(missing_ok=True)
                shutil.rmtree(folder, ignore_errors=True)
            write_sidecar(destination, {"output": str(destination), "complete": False, "config": config})
            run = JobRun(unit="prompt", skipped=len(skip), repaired_last_line=bool(state and state.repaired), skipped_input_lines=len(problems))
            meter = _Meter(todo, progress)
            started, cpu_started = time.monotonic(), time.process_time()
            if todo:
                folder.mkdir(parents=True, exist_ok=True)
                if cache:  # made here, so that the actors open a cache that is there (schema, WAL mode)
                    ResponseCache(cache_file).close()
                spec = _WorkerSpec(
                    graph=_portable(graph, pipe), policies=pipe.compiled.policies, settings=per_actor_settings(settings, options.actors),
                    role_models=dict(role_models or {}), model_factory=model_factory, config=config, concurrency=concurrency,
                    folder=str(folder.absolute()), run=parts.last_run + 1, cache=str(cache_file.absolute()) if cache else None,
                    cache_read=not retry_failed, max_batch_retries=options.max_batch_retries,
                )
                cpus = options.actor_cpus if options.actor_cpus is not None else (1.0 if settings.backend == "local" else 0.5)
                try:
                    task_read = functools.partial(read, str(Path(input_path).absolute()), problems=None)  # read in another process
                    execute = _execute_from_client if session is not None and session.client else _execute
                    execute(spec, task_read, skip, options, meter, cpus)
                except KeyboardInterrupt:
                    written = scan_parts(folder, clean=False)  # the blocks the actors finished, seen by the driver or not
                    safe = len(selected & (done | failed | written.done | written.failed))
                    raise JobInterrupted(f"{records_path} and {folder}/", safe, len(selected)) from None
                except ray.exceptions.RayError as exc:  # an actor that cannot start, a read that fails, Ray itself
                    stopped = exc
                finally:
                    meter.close()
        finally:
            if session is not None and session.started:
                ray.shutdown()
        if stopped is not None:  # every finished block merged, the prompts that killed workers named
            suspects = crash_suspects(folder)
            merged = merge_parts(records_path, folder)
            cause = [line for line in str(stopped).splitlines() if line.strip()][-1:] or [type(stopped).__name__]
            named = ""
            if suspects:
                listed = ", ".join(repr(i) for i in suspects[:10]) + (", ..." if len(suspects) > 10 else "")
                named = (
                    f"; {len(suspects)} prompt(s) were in flight when Ray workers died and Ray gave up on their batch: {listed} "
                    f"(a larger --ray-batch-retries lets aidsafe pin the prompt that kills the worker and record it as failed)"
                )
            raise AidsafeError(
                f"the Ray run stopped: {cause[0].strip()[:600]}{named}; {len(selected & merged.ids)} of {len(selected)} prompts "
                f"have a record in {records_path}; run the same command to continue"
            ) from stopped
        merged = merge_parts(records_path, folder)
        lost = selected - merged.ids
        if lost:  # Ray reported every batch done, so this is a bug: say so rather than end "complete"
            listed = ", ".join(repr(i) for i in sorted(lost)[:10])
            raise AidsafeError(f"{len(lost)} prompt(s) have no record after the Ray run: {listed}; run the same command to continue")
        # prompts run this time: counted in the output (a batch Ray ran twice may reach the meter twice)
        run.done = len((selected - skip) & merged.ids)
        run.tokens, run.cache_hits, run.seconds = meter.tokens, meter.cached, time.monotonic() - started
        run.cpu_seconds = time.process_time() - cpu_started  # the driver's: the actors' CPU is Ray's to report
        run.extra.update(
            {"shard": f"{shard[0]}/{shard[1]}" if shard else None, "engine": "ray", "actors": options.actors,
             "batch_size": options.batch_size, "blocks_merged": merged.parts, "duplicates_dropped": merged.duplicates}
        )
        run.extra.update({key: notes for key, notes in meter.notes.items() if notes})
        summary = pipe.summarize(records_path)
        summary.run = run.as_dict()
        write_sidecar(destination, {**summary.as_dict(), "complete": True, "config": config})
    if output_format != "jsonl":
        convert_output(records_path, output_format, destination)
    return summary

