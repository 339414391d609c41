"""``aidsafe generate --engine ray``: the same records as the local engine, run on Ray Data.

How a run goes (``OUT`` is the JSONL output, ``OUT.parts/`` its block folder):

1. **The driver** (the ``aidsafe`` process) takes ``OUT.lock``, refuses a resume with another
   configuration (the sidecar's, as the local engine does), repairs a torn last line of ``OUT``,
   reads the ids already written (in ``OUT`` and in every block of ``OUT.parts/``), and validates
   the whole input once, before any model call, with aidsafe's own readers.
2. **The read** is a Ray Data datasource that streams the input with the same readers (so every
   id is the one ``--engine local`` gives: the id field, else the line or row number) and leaves
   out the ids already written; it yields blocks of ``--ray-batch-size`` prompts.
3. **The actors**: ``map_batches`` over a pool of ``--ray-actors`` actors. Each builds the
   pipeline once (graph, policy pack, models, from the same options), with the shared response
   cache ``OUT.cache.sqlite``, and runs each batch through the async graph with at most
   ``--concurrency`` prompts in flight in that actor (batches overlap, so no slot idles at the
   tail of a batch). A finished batch is written as one block file
   ``OUT.parts/r<run>-<digest of its ids>.jsonl``: a temporary name, fsync, then a rename. The
   name is a function of the run and the batch's ids, so a batch that Ray runs again (its actor
   was killed: Ray Data's actor pools restart actors and retry their tasks, ``max_restarts`` and
   ``max_task_retries`` -1) replaces its block instead of adding one; calls the killed attempt
   made are answered from the cache.
4. **The merge**, once every batch is written: ``OUT`` and the blocks (oldest first) are joined
   into ``OUT`` (a temporary file, then a rename) with each id exactly once: an ``ok`` record is
   kept over any other copy, else the latest copy (a ``--retry-failed`` rerun) wins. Then the
   blocks are deleted. A crash at any point loses nothing written: the blocks (or the merged
   ``OUT``) hold every finished batch, and the next run skips their ids and merges again.
5. **The summary** (the same :class:`~aidsafe.summary.RunSummary` over every record of
   ``OUT``, with ``run.engine = "ray"``) goes to ``OUT.summary.json`` and is returned.

Ray runs where ``RAY_ADDRESS`` points (a cluster), or on a local cluster started for the run.
Actors write the blocks and the cache: on a multi-node cluster ``OUT`` must be on a file system
every node shares (and the SQLite cache then wants a local-disk-like one; ``--no-cache`` turns
it off).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AidsafeError, ConfigError, InputError, JobInterrupted
from ..inputs import PromptItem, read_prompts, report_problems
from ..models import ModelFactory, ModelSettings, ResponseCache, make_model
from ..outputs import OUTPUT_FORMATS, OutputLock, atomic_text, convert_output, read_record_lines, scan_output, write_sidecar
from ..pipeline import Pipeline
from ..policies import PolicySet
from ..records import Record
from ..runner import JobRun, cache_path, config_differences, refuse_other_config
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

__all__ = ["RayOptions", "generate_ray", "merge_parts", "parts_dir", "read_input"]

"""Input files read as Parquet (aidsafe's own readers take every other format)."""

_PART = re.compile(r"^r(\d+)-[0-9a-f]+\.jsonl$")


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine spreads the work (the records do not depend on it)."""

    actors: int = 2
    """Actors in the pool, each with its own pipeline and ``concurrency`` prompts in flight."""
    batch_size: int = 32
    """Prompts per batch: the unit of work Ray hands an actor, and of one block file."""
    actor_cpus: float | None = None
    """CPUs Ray reserves per actor; None: 1 for the embedded local model, else 0.5 (I/O-bound)."""


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
    files: int = 0
    last_run: int = 0


def scan_parts(folder: Path, *, clean: bool = True) -> PartsState:
    """Ids in the blocks of ``folder`` (each block is whole: blocks are written atomically);
    with ``clean``, the temporary files that a killed writer left are removed."""
    state = PartsState()
    if not folder.is_dir():
        return state
    for temp in folder.glob(".*.tmp") if clean else ():
        temp.unlink(missing_ok=True)
    for part in sorted(folder.glob("*.jsonl")):
        scanned = scan_output(part, repair=False)
        state.done |= scanned.done
        state.failed |= scanned.failed
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


# --- actors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSpec:
    """What an actor needs to build the driver's pipeline and write its blocks."""

    graph: str
    policies: PolicySet
    settings: ModelSettings
    role_models: dict[str, str]
    model_factory: ModelFactory
    config: dict[str, Any]
    concurrency: int
    folder: str
    run: int
    cache: str | None
    cache_read: bool


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

    async def _one(self, item: PromptItem) -> Record:
        async with self.slots:
            return await self.pipe.arun_one(item, models=self.models)

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        """Run one batch, write its block, and yield what the driver counts (an async generator:
        Ray Data runs several batches of an actor at once on the actor's event loop)."""
        items = [PromptItem(id=str(row["id"]), prompt=row["prompt"], source=row["source"], line=int(row["line"])) for row in batch.to_pylist()]
        ids = [item.id for item in items]
        records = await asyncio.gather(*(self._one(item) for item in items))
        name = part_name(self.spec.run, ids)
        await asyncio.to_thread(write_part, Path(self.spec.folder) / name, [record.model_dump_json() for record in records])
        yield pa.table(
            {
                "id": ids,
                "failed": [record.status == "failed" for record in records],
                "tokens": [total_tokens(record) for record in records],
                "cached": [sum(u.cached for u in record.usage.values()) for record in records],
                "part": [name] * len(records),
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
        self.started = time.monotonic()
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="prompt", desc="generate (ray)", dynamic_ncols=True)

    def add(self, batch: pa.Table) -> None:
        count = batch.num_rows
        self.done += count
        self.failed += sum(batch.column("failed").to_pylist())
        self.tokens += sum(batch.column("tokens").to_pylist())
        self.cached += sum(batch.column("cached").to_pylist())
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            self.bar.set_postfix(ok=self.done - self.failed, failed=self.failed, tok_s=f"{self.tokens / elapsed:.0f}", refresh=False)
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _connect() -> bool:
    """Join the cluster ``RAY_ADDRESS`` names, or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return True


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
    results = dataset.map_batches(
        _PromptWorker,
        fn_constructor_kwargs={"spec": spec},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        # two batches per actor at a time: one's slow last prompt leaves its slots to the other,
        # and no actor hoards batches an idle one could run
        compute=ray.data.ActorPoolStrategy(size=options.actors, max_tasks_in_flight_per_actor=2),
        num_cpus=cpus,
        # fault tolerance: Ray Data's actor pools restart a dead actor and run its batches again
        # (max_restarts=-1, max_task_retries=-1 by default; passing them is deprecated in Ray 2.60)
    )
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        meter.add(batch)


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
        state = scan_output(records_path, repair=True) if not overwrite else None
        parts = scan_parts(folder) if not overwrite else PartsState()
        done = (state.done if state else set()) | parts.done
        failed = ((state.failed if state else set()) | parts.failed) - done
        skip = frozenset(done if retry_failed else done | failed)
        problems: list[InputError] = []
        selected: set[str] = set()
        todo = 0
        for item in read(input_path, problems=problems):  # the whole input validated before any model call
            selected.add(item.id)
            todo += item.id not in skip
        if problems:
            report_problems(problems)
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
                graph=_portable(graph, pipe), policies=pipe.compiled.policies, settings=settings, role_models=dict(role_models or {}),
                model_factory=model_factory, config=config, concurrency=concurrency, folder=str(folder.absolute()),
                run=parts.last_run + 1, cache=str(cache_file.absolute()) if cache else None, cache_read=not retry_failed,
            )
            cpus = options.actor_cpus if options.actor_cpus is not None else (1.0 if settings.backend == "local" else 0.5)
            started_ray = _connect()
            try:
                task_read = functools.partial(read, str(Path(input_path).absolute()), problems=None)  # read in another process
                _execute(spec, task_read, skip, options, meter, cpus)
            except KeyboardInterrupt:
                written = scan_parts(folder, clean=False)  # the blocks the actors finished, seen by the driver or not
                safe = len(selected & (done | failed | written.done | written.failed))
                raise JobInterrupted(f"{records_path} and {folder}/", safe, len(selected)) from None
            except ray.exceptions.RayError as exc:  # an actor that cannot start, a read that fails, Ray itself
                cause = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
                raise AidsafeError(
                    f"the Ray run stopped: {cause[0].strip()[:600]}; the finished batches are safe in {folder}/; "
                    "run the same command to continue"
                ) from exc
            finally:
                meter.close()
                if started_ray:
                    ray.shutdown()
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
        summary = pipe.summarize(records_path)
        summary.run = run.as_dict()
        write_sidecar(destination, {**summary.as_dict(), "complete": True, "config": config})
    if output_format != "jsonl":
        convert_output(records_path, output_format, destination)
    return summary

