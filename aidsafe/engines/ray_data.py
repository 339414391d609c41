"""``--engine ray``: a file job's items run on Ray Data (:class:`RayExecutor`), the same records as
``--engine local``. ``aidsafe generate``, ``aidsafe judge`` and ``aidsafe pairs`` take it alike.

The runner (:func:`aidsafe.runner.run_job`) does what every file job gets, wherever its items run:
``OUT.lock``, the configuration the output was written with, the resume (the ids already in
``OUT`` and in the blocks an interrupted Ray run left in ``OUT.parts/``; an input whose ids name
other prompts than those records is refused: :class:`~aidsafe.pairing.ResumeCheck`), the whole
input validated once before any model call, the sidecar, the progress bar and Ctrl-C. This
executor adds where the items run:

1. **The read** is a Ray Data datasource that streams the input with the job's own reader (its
   :meth:`~aidsafe.runner.WorkerFactory.items`: so every id is the one ``--engine local`` gives)
   and leaves out the ids already written; it yields blocks of ``--ray-batch-size`` items.
2. **The actors**: ``map_batches`` over a pool of ``--ray-actors`` actors. Each builds the job's
   worker once from its picklable :meth:`~aidsafe.runner.FileJob.worker_factory` (graph, rubric,
   policy pack, models, from the same options; a worker whose configuration differs from the
   driver's is refused), with the shared response cache ``OUT.cache.sqlite``, and runs each
   batch with at most ``--concurrency`` items in flight in that actor (batches overlap, so no
   slot idles at the tail of a batch). Each record gets the driver's ``written_by`` stamp
   (:class:`~aidsafe.runner.Stamp`, as ``--engine local`` sets it). A finished batch is written as one block file
   ``OUT.parts/r<run>-<digest of its ids>.jsonl`` (:func:`~aidsafe.outputs.write_block`: a
   temporary name, fsync, then a rename). The name is a function of the run and the batch's
   ids, so a batch that Ray runs again replaces its block instead of adding one; calls the
   killed attempt made are answered from the cache. Each actor gets ``ceil(max_in_flight /
   actors)`` calls in flight per endpoint (the run's ``--max-in-flight`` and each endpoint's own
   ``max_in_flight``, at least 1), so the pool together keeps an endpoint's limit, not
   ``actors`` times it.
3. **The merge**, once every batch is written (:func:`~aidsafe.outputs.merge_blocks`): ``OUT``
   and the blocks (oldest first) are joined into ``OUT`` (a temporary file, then a rename) with
   each id exactly once: a record that did not fail is kept over any other copy, else the latest
   copy (a ``--retry-failed`` rerun) wins. Then the blocks are deleted. A crash at any point
   loses nothing written: the blocks (or the merged ``OUT``) hold every finished batch, and the
   next run skips their ids and merges again.
4. **The summary** is the job's, over every record of ``OUT``, with ``run.engine = "ray"``.

Why block files and not the records streamed back to this process: with Ray Client
(``ray://``) this process cannot drive Ray Data (see below), and the blocks are what the task
that does drive it leaves for this process to follow and merge; a block is also what survives
when the driver dies, so a resume loses no finished batch. The records stream back as
figures only (per batch: ids, failed, tokens, cache hits, wire notes) for the progress bar.

**An actor that dies** (a native crash, the OOM killer): Ray restarts it (``max_restarts`` -1)
and runs its batches again, at most ``max_batch_retries`` times each (Ray's ``max_task_retries``;
default 3). Each batch keeps a journal, ``OUT.parts/.<block>.journal``, of the attempts and of
the items each one started and finished. An attempt after a death runs the items that were in
flight then one at a time, alone in the actor, before the others; an item whose actor died while
it ran alone is not run again: it gets the job's failed record (``crashed``: for ``generate``,
``error.kind: worker_crash``, the batch named), as do, on the last attempt, the items still
under suspicion. So an item that kills its worker every time costs its own record, never the
run, and every other item's record lands (``--retry-failed`` runs those items again). If Ray
still gives up on a batch (its retries spent on deaths the journal cannot pin on an item), the
run stops with an error naming the items in flight at those deaths, after merging every
finished block into ``OUT``.

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
random token), writes one back that the driver must see, and finds each input; if any node
cannot, the run is refused naming the path and the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AidsafeError, ConfigError, InputError
from ..inputs import PromptItem, read_prompts
from ..models import ModelFactory, ModelSettings, ResponseCache, make_model
from ..outputs import BlocksState, MergedBlocks, block_name, blocks_dir, merge_blocks, read_records, scan_blocks, write_block
from ..policies import PolicySet
from ..records import Record
from ..runner import Executed, FileJob, JobOptions, Prior, Stamp, Work, WorkerFactory, blocks_prior, config_differences, discard_blocks
from ..summary import RunSummary

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

__all__ = [
    "RayExecutor", "RayOptions", "check_shared_paths", "generate_ray", "merge_parts", "parts_dir", "per_actor_settings", "read_input",
    "scan_parts",
]

JOURNAL_SUFFIX = ".journal"
"""A batch's journal: ``OUT.parts/.<block name>.journal`` (see :class:`BatchJournal`)."""


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine spreads the work (the records do not depend on it)."""

    actors: int = 2
    """Actors in the pool, each with its own worker and ``concurrency`` items in flight."""
    batch_size: int = 32
    """Items per batch: the unit of work Ray hands an actor, and of one block file."""
    actor_cpus: float | None = None
    """CPUs Ray reserves per actor; None: 1 for the embedded local model, else 0.5 (I/O-bound)."""
    max_batch_retries: int = 3
    """Times a batch whose actor died is run again (Ray's ``max_task_retries``); an item that
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


parts_dir = blocks_dir
"""The block folder of a JSONL output: ``out.jsonl`` -> ``out.jsonl.parts``."""


def scan_parts(folder: Path, *, clean: bool = True) -> BlocksState:
    """:func:`~aidsafe.outputs.scan_blocks` of generation records."""
    return scan_blocks(folder, model=Record, what="an aidsafe record", clean=clean)


def merge_parts(records_path: Path, folder: Path) -> MergedBlocks:
    """:func:`~aidsafe.outputs.merge_blocks` of generation records."""
    return merge_blocks(records_path, folder, model=Record)


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


# --- input ---------------------------------------------------------------------------------


def _todo_blocks(factory: WorkerFactory[Any, Any], skip: frozenset[str], rows: int) -> Iterator[pa.Table]:
    """The read task: the input's items without the ids already written, ``rows`` per block (each
    item pickled: any item a job reads, a prompt, a record, a pair of records)."""
    ids: list[str] = []
    items: list[bytes] = []

    def block() -> pa.Table:
        return pa.table({"id": pa.array(ids, pa.string()), "item": pa.array(items, pa.binary())})

    for item in factory.items():
        item_id = factory.item_id(item)
        if item_id in skip:
            continue
        ids.append(item_id)
        items.append(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        if len(ids) >= rows:
            yield block()
            ids, items = [], []
    if ids:
        yield block()


class _ItemSource(Datasource):
    """A Ray Data datasource over a job's input: one read task that streams the file (the ids
    may depend on the position in it) and yields blocks as it goes."""

    def __init__(self, factory: WorkerFactory[Any, Any], skip: frozenset[str], rows: int) -> None:
        self._factory = factory
        self._skip = skip
        self._rows = rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: DataContext | None = None
    ) -> list[ReadTask]:
        read_fn = functools.partial(_todo_blocks, self._factory, self._skip, self._rows)
        known = {f.name for f in dataclasses.fields(BlockMetadata)}  # Ray < 2.46 kept the schema here
        metadata = BlockMetadata(**{name: None for name in ("num_rows", "size_bytes", "schema", "input_files", "exec_stats") if name in known})
        return [ReadTask(read_fn, metadata)]


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
class _ActorSpec:
    """What an actor needs to build the driver's worker and write its blocks."""

    factory: WorkerFactory[Any, Any]
    config: dict[str, Any]
    """The driver's configuration: an actor that builds another is refused."""
    stamp: Stamp
    """What each record carries (``written_by``), set here as the driver's executor sets it."""
    concurrency: int
    folder: str
    run: int
    cache: str | None
    cache_read: bool
    max_batch_retries: int = 3


class _JobActor:
    """One actor of the pool: the job's worker built once, batches run through its async ``run``."""

    def __init__(self, spec: _ActorSpec) -> None:
        self.job: Any = spec.factory()
        config = {"job": self.job.name, **self.job.config()}
        if config != spec.config:  # e.g. a node with other templates or another aidsafe
            listed = "; ".join(config_differences(spec.config, config))
            raise ConfigError(f"a Ray actor built another configuration than the driver: {listed}")
        self.spec = spec
        self.cache = ResponseCache(spec.cache, read=spec.cache_read) if spec.cache else None
        pool = self.job.models
        self.models = pool.cached(self.cache) if self.cache is not None else pool
        self.slots = asyncio.Semaphore(spec.concurrency)
        self.gate = _Gate()
        self.hits_reported = 0

    async def _one(self, item_id: str, item: Any, journal: BatchJournal) -> Any:
        async with self.slots, self.gate.shared():
            journal.note("start", item_id)
            record = await self.job.run(item, self.models)
            journal.note("end", item_id)
            return record

    async def _alone(self, item_id: str, item: Any, journal: BatchJournal) -> Any:
        async with self.gate.exclusive():
            journal.note("solo", item_id)
            record = await self.job.run(item, self.models)
            journal.note("end", item_id)
            return record

    async def _records(self, ids: list[str], items: list[Any], name: str, journal: BatchJournal) -> list[Any]:
        """The batch's records. After attempts that died: the items that killed their actor
        alone get the job's ``crashed`` record, the others in flight at a death run alone first
        (on the last attempt they get a ``crashed`` record too), then the rest as usual."""
        history = journal.history()
        attempt, allowed = history.attempts + 1, self.spec.max_batch_retries + 1
        journal.note("attempt")
        by_id: dict[str, Any] = {}
        tries = f"{history.attempts} attempt(s) of batch {name} died"
        killed_alone, suspects = set(history.killed_alone), set(history.suspects)
        for item_id, item in zip(ids, items, strict=True):
            if item_id in killed_alone:
                by_id[item_id] = self.job.crashed(item, f"the Ray worker died while this {self.job.unit} ran alone in it ({tries}); not run again")
            elif item_id in suspects and attempt >= allowed:
                by_id[item_id] = self.job.crashed(
                    item, f"the Ray worker died with this {self.job.unit} in flight ({tries}; {allowed} allowed); not run again"
                )
        for item_id, item in zip(ids, items, strict=True):
            if item_id in suspects and item_id not in by_id:
                by_id[item_id] = await self._alone(item_id, item, journal)
        rest = [(item_id, item) for item_id, item in zip(ids, items, strict=True) if item_id not in by_id]
        for (item_id, _), record in zip(rest, await asyncio.gather(*(self._one(i, item, journal) for i, item in rest)), strict=True):
            by_id[item_id] = record
        return [by_id[item_id] for item_id in ids]

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        """Run one batch, write its block, and yield what the driver counts (an async generator:
        Ray Data runs several batches of an actor at once on the actor's event loop)."""
        ids = [str(i) for i in batch.column("id").to_pylist()]
        items = [pickle.loads(raw) for raw in batch.column("item").to_pylist()]
        name = block_name(self.spec.run, ids)
        block = Path(self.spec.folder) / name
        journal = BatchJournal(journal_path(block))
        if block.exists():  # an earlier attempt wrote it, then died before Ray heard of it
            records = list(read_records(block, self.job.record_model, what=self.job.what))
        else:
            made = await self._records(ids, items, name, journal)
            records = [self.spec.stamp.apply(record, item) for record, item in zip(made, items, strict=True)]
            await asyncio.to_thread(write_block, block, [record.model_dump_json() for record in records])
        journal.remove()
        hits = self.cache.hits if self.cache is not None else 0
        cached, self.hits_reported = hits - self.hits_reported, hits  # this actor's cache hits since its last batch
        yield pa.table(
            {
                "id": [str(record.id) for record in records],
                "failed": [bool(self.job.failed(record)) for record in records],
                "tokens": [int(self.job.tokens(record)) for record in records],
                "cached": [cached] + [0] * (len(records) - 1),
                "part": [name] * len(records),
                # how this actor's requests travel (json_object fallback, merged system text): the driver's summary says so
                "wire": [json.dumps(self.job.models.wire_notes())] * len(records),
            }
        )


# --- the driver ----------------------------------------------------------------------------


class _Figures:
    """What the batches report (for the runner's progress bar, when there is one here): items,
    failed, tokens, cache hits, and the actors' wire notes merged."""

    def __init__(self, meter: Any | None = None) -> None:
        self.meter = meter
        self.cached = 0
        self.notes: dict[str, dict[str, Any]] = {}
        """The actors' :meth:`~aidsafe.models.ModelPool.wire_notes`, merged."""

    def add(self, batch: pa.Table) -> None:
        if "wire" in batch.column_names and batch.num_rows:
            self.merge_notes(json.loads(batch.column("wire")[0].as_py()))
        self.cached += sum(batch.column("cached").to_pylist())
        if self.meter is not None:
            self.meter.add(batch.num_rows, sum(batch.column("failed").to_pylist()), sum(batch.column("tokens").to_pylist()))

    def merge_notes(self, notes: dict[str, dict[str, Any]]) -> None:
        for key, value in notes.items():
            self.notes.setdefault(key, {}).update(value)

    def totals(self) -> dict[str, Any]:
        return {"cached": self.cached, "notes": self.notes}


def _actor_cpus(options: RayOptions, settings: ModelSettings) -> float:
    return options.actor_cpus if options.actor_cpus is not None else (1.0 if settings.backend == "local" else 0.5)


def _execute(spec: _ActorSpec, skip: frozenset[str], options: RayOptions, figures: _Figures, cpus: float, label: str) -> dict[str, Any]:
    """Build the Ray Data pipeline (read, actor pool) and drive it to the end; the figures' totals."""
    have = ray.cluster_resources().get("CPU", 0.0)
    if options.actors * cpus > have:  # an autoscaling cluster may grow; a fixed one waits forever
        print(
            f"aidsafe {label}: warning: {options.actors} actors of {cpus:g} CPU each need {options.actors * cpus:g} CPUs, "
            f"the Ray cluster has {have:g} now; lower --ray-actors if the run does not start",
            file=sys.stderr,
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # aidsafe's own bar counts items; Ray's would count blocks
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" lines around the summary
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"
    # the read streams one file and waits on the actors: it reserves no CPU, so that actors holding
    # every CPU cannot starve it (named as this Ray version names it)
    named = "num_cpus" in inspect.signature(ray.data.read_datasource).parameters
    read_cpus: dict[str, Any] = {"num_cpus": 0} if named else {"ray_remote_args": {"num_cpus": 0}}
    dataset = ray.data.read_datasource(_ItemSource(spec.factory, skip, options.batch_size), **read_cpus)
    # a dead actor is restarted (Ray Data's pools expect that: max_restarts -1) and each of its batches
    # runs again at most max_batch_retries times (Ray Data's default, -1, would loop forever on an
    # item that kills its actor). Ray 2.60 takes these only as **ray_remote_args, which it
    # deprecates without a named replacement: the warning is silenced, and a Ray that no longer takes
    # them keeps its own default, where each actor's journal still ends such a batch within the bound.
    retries: dict[str, Any] = {}
    parameters = inspect.signature(ray.data.Dataset.map_batches).parameters
    if "max_task_retries" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        retries = {"max_restarts": -1, "max_task_retries": options.max_batch_retries}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated", category=DeprecationWarning)
        results = dataset.map_batches(
            _JobActor,
            fn_constructor_kwargs={"spec": spec},
            batch_size=options.batch_size,
            batch_format="pyarrow",
            # two batches per actor at a time: one's slow last item leaves its slots to the other,
            # and no actor hoards batches an idle one could run
            compute=ray.data.ActorPoolStrategy(size=options.actors, max_tasks_in_flight_per_actor=2),
            num_cpus=cpus,
            **retries,
        )
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        figures.add(batch)
    return figures.totals()


def _execute_on_cluster(spec: _ActorSpec, skip: frozenset[str], options: RayOptions, cpus: float, label: str) -> dict[str, Any]:
    """A task on the cluster that drives the Ray Data pipeline (for Ray Client, see :func:`_execute_from_client`)."""
    return _execute(spec, skip, options, _Figures(), cpus, label)


def _execute_from_client(spec: _ActorSpec, skip: frozenset[str], options: RayOptions, figures: _Figures, cpus: float, label: str,
                         job: FileJob[Any, Any]) -> dict[str, Any]:
    """:func:`_execute` over Ray Client (``ray://``). Ray Data drives a pipeline only from a worker
    of the cluster, not from a client, so a task on the cluster does (no CPU reserved); this
    process follows the blocks it writes to the shared folder for the progress bar, and takes the
    task's totals at the end. Ctrl-C cancels the task (and with it the pipeline and its actors)."""
    task = ray.remote(num_cpus=0, max_retries=0)(_execute_on_cluster)
    ref = task.remote(spec, skip, options, cpus, label)
    folder, prefix = Path(spec.folder), f"r{spec.run:04d}-"
    seen: set[str] = set()
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=1.0)
            for part in sorted(folder.glob(f"{prefix}*.jsonl")):  # whole files: blocks are renamed into place
                if part.name not in seen:
                    seen.add(part.name)
                    records = list(read_records(part, job.record_model, what=job.what))
                    if figures.meter is not None:
                        figures.meter.add(len(records), sum(bool(job.failed(r)) for r in records), sum(job.tokens(r) for r in records))
            if ready:
                totals: dict[str, Any] = ray.get(ref)  # raises what stopped the pipeline
                figures.cached += int(totals.get("cached", 0))
                figures.merge_notes(totals.get("notes") or {})
                return figures.totals()
    except KeyboardInterrupt:
        ray.cancel(ref)
        raise


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` at once while Ray is driven from this thread (``asyncio.run``
    would only cancel the task, which a blocking Ray call does not see)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class RayExecutor:
    """A file job's items on a Ray Data actor pool (see the module docstring); passed to
    :func:`~aidsafe.runner.run_job` as ``JobOptions.executor``. ``concurrency`` is per actor;
    the job's ``worker_factory`` (and the model factory in it) must pickle."""

    name = "ray"
    wants_ids = True

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        if self.options.actors < 1 or self.options.batch_size < 1:
            raise AidsafeError("--ray-actors and --ray-batch-size must be at least 1")
        if self.options.max_batch_retries < 0:
            raise AidsafeError("--ray-batch-retries must be at least 0")
        self._factory: WorkerFactory[Any, Any] | None = None
        self._session: _Session | None = None
        self._job: FileJob[Any, Any] | None = None

    def prior(self, job: FileJob[Any, Any], output: Path) -> Prior:
        return blocks_prior(job, output)

    def discard(self, output: Path) -> None:
        discard_blocks(output)

    def _worker_factory(self, job: FileJob[Any, Any]) -> WorkerFactory[Any, Any]:
        make = getattr(job, "worker_factory", None)
        if make is None:
            raise AidsafeError(f"aidsafe {job.name} cannot run with --engine ray (the job gives no worker factory)")
        factory: WorkerFactory[Any, Any] = make(functools.partial(per_actor_settings, actors=self.options.actors))
        return factory

    @contextlib.contextmanager
    def session(self, job: FileJob[Any, Any], output: Path, needed: bool) -> Iterator[None]:
        """Join the cluster (or start a local one) and check that it shares this machine's files,
        before anything is deleted or any model called; shut down a cluster started here."""
        self._job = job
        if not needed:
            yield
            return
        factory = self._worker_factory(job)  # an actor count the endpoints cannot take is refused here
        session = _connect()
        try:
            if not session.own_cluster:  # before anything is touched or called
                check_shared_paths(output.parent, output.name, *(Path(p) for p in factory.inputs))
            self._factory, self._session = factory, session
            yield
        finally:
            self._factory = self._session = None
            if session.started:
                ray.shutdown()

    async def execute(self, job: FileJob[Any, Any], pending: Callable[[], Iterator[Any]], work: Work) -> Executed:
        folder = blocks_dir(work.output)
        figures = _Figures(work.meter)
        work.meter.notes = lambda: figures.notes
        stopped: ray.exceptions.RayError | None = None
        if work.todo:
            assert self._factory is not None and self._session is not None, "execute runs within session"
            folder.mkdir(parents=True, exist_ok=True)
            spec = _ActorSpec(
                factory=self._factory, config={"job": job.name, **job.config()}, stamp=work.stamp, concurrency=work.concurrency,
                folder=str(folder.absolute()), run=work.prior.last_run + 1,
                cache=str(work.cache.absolute()) if work.cache is not None else None, cache_read=work.cache_read,
                max_batch_retries=self.options.max_batch_retries,
            )
            cpus = _actor_cpus(self.options, self._factory.settings)
            try:
                with _ctrl_c_raises():
                    if self._session.client:
                        _execute_from_client(spec, work.skip, self.options, figures, cpus, job.name, job)
                    else:
                        _execute(spec, work.skip, self.options, figures, cpus, job.name)
            except ray.exceptions.RayError as exc:  # an actor that cannot start, a read that fails, Ray itself
                stopped = exc
        units = f"{job.unit}s"
        if stopped is not None:  # every finished block merged, the items that killed workers named
            suspects = crash_suspects(folder)
            merged = merge_blocks(work.output, folder, model=job.record_model, what=job.what)
            cause = [line for line in str(stopped).splitlines() if line.strip()][-1:] or [type(stopped).__name__]
            named = ""
            if suspects:
                listed = ", ".join(repr(i) for i in suspects[:10]) + (", ..." if len(suspects) > 10 else "")
                named = (
                    f"; {len(suspects)} {job.unit}(s) were in flight when Ray workers died and Ray gave up on their batch: {listed} "
                    f"(a larger --ray-batch-retries lets aidsafe pin the {job.unit} that kills the worker and record it as failed)"
                )
            have = work.total - work.todo + len(work.pending_ids & merged.ids)
            raise AidsafeError(
                f"the Ray run stopped: {cause[0].strip()[:600]}{named}; {have} of {work.total} {units} "
                f"have a record in {work.output}; run the same command to continue"
            ) from stopped
        merged = merge_blocks(work.output, folder, model=job.record_model, what=job.what)
        lost = work.pending_ids - merged.ids
        if lost:  # Ray reported every batch done, so this is a bug: say so rather than end "complete"
            listed = ", ".join(repr(i) for i in sorted(lost)[:10])
            raise AidsafeError(f"{len(lost)} {job.unit}(s) have no record after the Ray run: {listed}; run the same command to continue")
        extra: dict[str, Any] = {
            "engine": "ray", "actors": self.options.actors, "batch_size": self.options.batch_size,
            "blocks_merged": merged.parts, "duplicates_dropped": merged.duplicates,
        }
        extra.update({key: notes for key, notes in figures.notes.items() if notes})
        # items run this time: counted in the output (a batch Ray ran twice may reach the meter twice)
        return Executed(done=len(work.pending_ids & merged.ids), cache_hits=figures.cached, extra=extra)

    def written(self, work: Work) -> int:
        if self._job is None:
            return 0
        written = scan_blocks(blocks_dir(work.output), model=self._job.record_model, what=self._job.what, clean=False)
        return len(work.pending_ids & (written.done | written.failed))  # the blocks the actors finished, seen here or not

    def where(self, output: Path) -> str:
        return f"{output} and {blocks_dir(output)}/"


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


def check_shared_paths(output_dir: Path, name: str, input_path: Path, *more_inputs: Path, timeout: float = 120.0) -> None:
    """Refuse (before any model call) a cluster whose nodes do not share ``output_dir`` and the
    inputs with this process at the same absolute paths (see :func:`_check_shared_paths`, once per input)."""
    for path in (input_path, *more_inputs):
        _check_shared_paths(output_dir, name, path, timeout=timeout)


def _check_shared_paths(output_dir: Path, name: str, input_path: Path, *, timeout: float = 120.0) -> None:
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
    """:meth:`Pipeline.generate <aidsafe.pipeline.Pipeline.generate>` with a :class:`RayExecutor`
    (see the module docstring): the same options, records and summary; ``ray_options`` spreads
    the work.

    ``concurrency`` is per actor. ``model_factory`` must pickle (actors build their models with
    it). Ctrl-C raises :class:`~aidsafe.errors.JobInterrupted`: the finished batches are safe in
    ``OUT.parts/`` and the same call continues.
    """
    from ..pipeline import Pipeline

    executor = RayExecutor(ray_options)
    pipe = Pipeline(graph, policies, settings or ModelSettings(), role_models=role_models, model_factory=model_factory)
    options = JobOptions(concurrency=concurrency, overwrite=overwrite, retry_failed=retry_failed, cache=cache, progress=progress,
                         executor=executor)
    return pipe.generate(Path(input_path), Path(output_path), options, prompt_field=prompt_field, id_field=id_field, limit=limit, shard=shard,
                         output_format=output_format, lenient=lenient)
