"""One runner for file jobs: ``aidsafe generate``, ``aidsafe judge``, ``aidsafe pairs`` and the jobs to come.

A *file job* turns a stream of input items into one JSON line per item in an output file. The
runner owns everything such a job needs besides the work itself, so every job gets it alike,
wherever its items run: an :class:`Executor` passed to :func:`run_job` runs them
(:class:`LocalExecutor`: in this process, ``concurrency`` in flight; the Ray Data executor,
:class:`aidsafe.engines.ray_data.RayExecutor`: on a pool of Ray actors, each building the job's
worker from the job's picklable :meth:`FileJob.worker_factory`). The rest exists once:

- **one live run per output**: ``OUT.lock`` (``fcntl.flock``); a second run is refused at once;
- **the configuration the output was written with** (in the summary sidecar, from the start of
  the run): resuming with a different one is refused with the differences listed, the output
  untouched, unless ``overwrite``;
- **records that say what wrote them**: every record carries ``written_by`` (a
  :class:`~aidsafe.records.WrittenBy`: the record format, the job, the digest of its
  configuration, and the digests of the records it was made from), set by the executor from
  :attr:`Work.stamp` (:meth:`Stamp.apply`); so a resume whose sidecar is lost still refuses
  another configuration (by the digests: the differences cannot be listed), and an output whose
  records carry two digests is refused with the ``file:line`` of the first odd one;
- **exactly-once resume**: items with a record are skipped; a torn last line is cut; a corrupt
  line in the middle is refused with its ``file:line``; ``retry_failed`` runs the failed items
  again; ``overwrite`` starts over; a job whose items have a prompt (an optional
  ``item_prompt(item)`` method, with an ``input_name``) has every item with a record checked
  against that record's prompt, and an input whose ids name other prompts than the output's is
  refused (:class:`~aidsafe.pairing.ResumeCheck`);
- **the input streamed and validated** in full before the first model call;
- **concurrency**: ``concurrency`` items in flight (per worker with an executor elsewhere),
  records written (and flushed) as they finish, by the runner itself or, from workers elsewhere,
  as whole block files (:func:`~aidsafe.outputs.write_block`) merged into the output once;
- **the response cache** (``OUT.cache.sqlite``): the job's models answer a request seen before
  from it, so a resumed run pays only for the calls that were in flight;
- **progress** (done, ok, failed, in flight, tokens/s, ETA) and **the summary sidecar**;
- **Ctrl-C**: :class:`~aidsafe.errors.JobInterrupted` says how many records are safe and that
  the same command continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ._concurrency import bounded
from .errors import AidsafeError, ConfigMismatchError, InputError, JobInterrupted
from .models import ModelPool, ModelSettings, ResponseCache
from .models.endpoints import all_stats as all_endpoint_stats
from .outputs import (
    BlocksState,
    LineModel,
    OutputLock,
    OutputState,
    blocks_dir,
    drop_records,
    merge_blocks,
    mixed_configs,
    read_sidecar,
    scan_blocks,
    scan_output,
    sidecar_path,
    stamp_of,
    write_sidecar,
)
from .pairing import ResumeCheck
from .records import RECORD_FORMAT, WrittenBy, config_sha256

__all__ = [
    "Executed", "Executor", "FileJob", "JobOptions", "JobRun", "LocalExecutor", "Prior", "Stamp", "Summary", "Work", "WorkerFactory",
    "blocks_prior", "discard_blocks",
    "input_configs", "portable_path", "run_job",
]

ItemT = TypeVar("ItemT")
RecordT = TypeVar("RecordT", bound=BaseModel)


class Summary(Protocol):
    """What a job reports at the end: written to the sidecar by :meth:`as_dict`."""

    def as_dict(self) -> dict[str, Any]: ...


class FileJob(Protocol[ItemT, RecordT]):
    """The work of one file job; :func:`run_job` does the rest."""

    @property
    def name(self) -> str:
        """``generate``, ``judge``, ...: the progress bar's label and the ``job`` of its configuration."""
        ...

    @property
    def unit(self) -> str:
        """What one item is (``prompt``, ``record``, ``pair``): progress bar unit and run figures."""
        ...

    @property
    def record_model(self) -> LineModel[RecordT]:
        """What each output line validates as (scans and resumes use it); a model with a
        ``written_by: WrittenBy | None`` field (:meth:`Stamp.apply` sets it)."""
        ...

    @property
    def what(self) -> str:
        """How errors name a line of the output, e.g. ``an aidsafe record``."""
        ...

    @property
    def models(self) -> ModelPool:
        """The job's models; the runner answers their calls from the response cache and closes them."""
        ...

    @property
    def default_concurrency(self) -> int:
        """Items in flight when the caller does not say."""
        ...

    def config(self) -> dict[str, Any]:
        """What the output depends on (graph, rubric, policies, templates, models, sampling)."""
        ...

    def items(self, problems: list[InputError] | None) -> Iterator[ItemT]:
        """The input, streamed and validated (a bad input raises before any model call); skipped
        bad lines of a lenient read are appended to ``problems`` when it is given."""
        ...

    def item_id(self, item: ItemT) -> str: ...

    async def run(self, item: ItemT, models: ModelPool) -> RecordT:
        """The record of one item; a failure is a record too, never an exception."""
        ...

    def tokens(self, record: RecordT) -> int: ...

    def failed(self, record: RecordT) -> bool: ...

    def summarize(self, output: Path, run: JobRun) -> Summary:
        """Totals over every record of the output, with what this invocation did."""
        ...


class WorkerFactory(Protocol[ItemT, RecordT]):
    """What a job gives an executor that runs its items in other processes (a Ray actor): it
    pickles, and rebuilds the job there (``factory()``), with the same configuration.

    A job offers one by ``worker_factory(settings)``, ``settings`` mapping its model settings to a
    worker's (e.g. a share of each endpoint's calls in flight); the job that ``factory()`` builds
    also answers ``crashed(item, message)``: the failed record of an item whose worker died."""

    inputs: tuple[str, ...]
    """The input files, as absolute paths (read where the items run)."""
    settings: ModelSettings
    """The workers' model settings."""

    def __call__(self) -> FileJob[ItemT, RecordT]: ...

    def items(self) -> Iterator[ItemT]:
        """The input, streamed as :meth:`FileJob.items` streams it (the same items and ids)."""
        ...

    def item_id(self, item: ItemT) -> str: ...


@dataclass
class JobOptions:
    """How to run a file job (library defaults; the CLI passes its flags through)."""

    concurrency: int | None = None
    """Items in flight; None: the job's default (16 against an endpoint, 1 for the local model)."""
    overwrite: bool = False
    """Start from scratch: delete the output, its cache and its sidecar first."""
    retry_failed: bool = False
    """Run the items whose records failed again (asking the model afresh), replacing those records."""
    cache: bool = True
    """Keep the response cache that makes resumes free."""
    progress: bool = True
    """Show a progress bar (tqdm, on stderr)."""
    on_input_problems: Callable[[list[InputError]], None] | None = None
    """Called once, before the run, with the input lines a lenient read skipped."""
    executor: Executor | None = None
    """Where the items run; None: :class:`LocalExecutor` (this process)."""


@dataclass
class JobRun:
    """What one invocation of a file job did (the ``run`` part of the summary)."""

    unit: str
    done: int = 0
    """Items run this time."""
    skipped: int = 0
    """Items that already had a record (resumed)."""
    repaired_last_line: bool = False
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of this process (all its threads) over the run: near ``seconds``, the client is the
    limit. With ``--engine ray`` the driver's alone."""
    tokens: int = 0
    cache_hits: int = 0
    skipped_input_lines: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Job-specific figures (e.g. the shard)."""

    def as_dict(self) -> dict[str, Any]:
        seconds = self.seconds
        return {
            f"{self.unit}s": self.done,
            "skipped": self.skipped,
            "repaired_last_line": self.repaired_last_line,
            "seconds": round(seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            f"{self.unit}s_per_s": round(self.done / seconds, 3) if seconds else 0.0,
            "tokens_per_s": round(self.tokens / seconds, 1) if seconds else 0.0,
            "cache_hits": self.cache_hits,
            **self.extra,
            "skipped_input_lines": self.skipped_input_lines,
        }


def portable_path(given: str | os.PathLike[str], resolved: Path) -> str:
    """A graph, rubric or pack as a worker in another process (a Ray actor, on a node of a shared
    file system) loads it: a shipped name stays a name, a file becomes an absolute path
    (``resolved`` is the file that ``given`` was loaded from)."""
    text = os.fspath(given)
    shipped = resolved != Path(text).expanduser()  # a name resolves to the package's own file
    return text if shipped else str(resolved.resolve())


def cache_path(output: Path) -> Path:
    """The response cache of an output: ``out.jsonl`` -> ``out.jsonl.cache.sqlite``."""
    return output.with_name(output.name + ".cache.sqlite")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: before -> now`` for every setting that differs (nested keys dotted)."""
    old, new = _flatten(before), _flatten(now)
    missing = "(not set)"
    return [
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    ]


_CONTINUE = "use the same settings to continue, --overwrite to start over, or write to a new output"


def refuse_other_config(output: Path, sidecar_of: Path, config: dict[str, Any]) -> bool:
    """Raise :class:`ConfigMismatchError` when the sidecar of ``sidecar_of`` records a configuration
    other than ``config``; nothing when it records none (lost, or written before outputs remembered
    it). Returns whether it records one."""
    previous = (read_sidecar(sidecar_of) or {}).get("config")
    if not isinstance(previous, dict):
        return False
    differences = config_differences(previous, config)
    if differences:
        listed = "\n".join(f"  {line}" for line in differences)
        raise ConfigMismatchError(
            f"{output} was written with another configuration; resuming would mix records of both:\n{listed}\n{_CONTINUE}"
        )
    return True


@dataclass(frozen=True)
class Stamp:
    """What every record of a file job carries in ``written_by`` (:class:`~aidsafe.records.WrittenBy`):
    the record format, the job, and :func:`~aidsafe.records.config_sha256` of the job's
    configuration (the one the summary sidecar remembers). Made once by :func:`run_job` and handed
    to the executor (:attr:`Work.stamp`); it pickles, so workers elsewhere stamp alike."""

    job: str
    config: str
    """The configuration's digest."""
    format: int = RECORD_FORMAT

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Stamp:
        """The stamp of a job's configuration (``{"job": name, **job.config()}``)."""
        return cls(job=str(config["job"]), config=config_sha256(config))

    def written_by(self, inputs: list[str] | tuple[str, ...] = ()) -> WrittenBy:
        return WrittenBy(format=self.format, job=self.job, config=self.config, inputs=list(dict.fromkeys(inputs)))

    def apply(self, record: RecordT, item: Any) -> RecordT:
        """``record`` with ``written_by`` set: this stamp, with the configuration digests of the
        records ``item`` was made from (:func:`input_configs`) as ``inputs``. A record made from
        another (a judged record from its generated one) drops the stamp it inherited."""
        if "written_by" not in type(record).model_fields:
            raise TypeError(f"{type(record).__name__} has no 'written_by' field: a file job's records carry one")
        return record.model_copy(update={"written_by": self.written_by(input_configs(item))})


def input_configs(item: Any) -> list[str]:
    """The ``written_by.config`` of the records a job's item is (a generated record to judge or pair,
    a pair of records to compare), in order; none for a prompt or for records without one."""
    parts = item if isinstance(item, tuple) else (item,)
    return [stamp.config for stamp in map(stamp_of, parts) if stamp is not None]


def _refuse_other_records(output: Path, sidecar_of: Path, stamp: Stamp, found: list[tuple[str, Path, int]], remembered: bool,
                          newest: int) -> None:
    """Refuse to resume ``output`` when its records (and an interrupted run's blocks: ``found``, each
    digest with the file and line of its first record, the output's first) carry a configuration
    digest other than this run's, or records of two configurations, or a record format newer than
    this aidsafe writes. ``remembered``: the sidecar remembers this run's configuration."""
    if newest > stamp.format:
        raise ConfigMismatchError(
            f"{output} holds records of format {newest}, written by a newer aidsafe (this one writes format {stamp.format}); "
            "continue it with that aidsafe, or start over with --overwrite"
        )
    if len(found) > 1:
        first, odd = found[0], found[1]
        raise mixed_configs(odd[1], odd[2], odd[0], (first[1], first[2]), first[0])
    if not found or found[0][0] == stamp.config:
        return
    config, where, line = found[0]
    sidecar = sidecar_path(sidecar_of)
    if remembered:
        raise ConfigMismatchError(
            f"{output} was written with another configuration: its records carry configuration sha256 {config} "
            f"(from {where}:{line}), but its summary sidecar {sidecar} remembers this run's ({stamp.config}), so the sidecar "
            f"is not this output's; {_CONTINUE}"
        )
    raise ConfigMismatchError(
        f"{output} was written with another configuration: its records carry configuration sha256 {config} "
        f"(from {where}:{line}), this run's is {stamp.config}; its summary sidecar {sidecar} is gone (or remembers no "
        f"configuration), so the differences cannot be listed; resuming would mix records of both; {_CONTINUE}"
    )


def _endpoint_figures(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per endpoint, this run's calls, ok, overloaded, failed and drained (the counts since ``before``)
    and its limit and health at the end."""
    out: dict[str, dict[str, Any]] = {}
    for url, now in after.items():
        was = before.get(url, {})
        out[url] = {k: now[k] - was.get(k, 0) for k in ("calls", "ok", "overloaded", "failed", "drained")} | {"limit": now["limit"], "up": now["up"]}
    return out


def _endpoint_postfix(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """In flight per endpoint for the progress bar, ``down`` for a drained one (several endpoints only)."""
    return " ".join(f"{v['in_flight']}" if v["up"] else "down" for v in stats.values())


def wire_postfix(notes: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``system=merged`` and ``schema=json_object`` on the progress bar where some server needs them."""
    out: dict[str, str] = {}
    merged = notes.get("system_role") or {}
    if merged:
        out["system"] = f"merged({len(merged)})" if len(merged) > 1 else "merged"
    modes = {n.get("mode") for n in (notes.get("structured_output") or {}).values()}
    if "json_object" in modes:
        out["schema"] = "json_object"
    return out


class _Meter:
    """Progress bar: done, ok, failed, in flight (per endpoint when there are several), tokens/s, ETA."""

    def __init__(self, total: int, enabled: bool, desc: str, unit: str,
                 endpoints: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
                 notes: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None) -> None:
        self.done = self.failed = self.in_flight = self.tokens = 0
        self.counts_in_flight = False
        """Whether this process sees items start (not so when workers elsewhere run them)."""
        self.endpoints = endpoints
        self.notes = notes
        self.started_at = time.monotonic()
        self.shown_at = 0.0
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)

    def started(self) -> None:
        self.counts_in_flight = True
        self.in_flight += 1

    def finished(self, failed: bool, tokens: int) -> None:
        self.in_flight -= 1
        self.add(1, int(failed), tokens)

    def add(self, count: int, failed: int, tokens: int) -> None:
        """``count`` items finished at once (a batch that workers elsewhere ran)."""
        self.done += count
        self.failed += failed
        self.tokens += tokens
        if self.bar is not None:
            now = time.monotonic()
            if now - self.shown_at >= 0.2:  # the figures at most 5 times a second: they cost more than the count
                self._figures(now)
            self.bar.update(count)

    def _figures(self, now: float) -> None:
        self.shown_at = now
        stats = self.endpoints() if self.endpoints is not None else {}
        per_endpoint = {"endpoints": _endpoint_postfix(stats)} if len(stats) > 1 else {}
        notes = self.notes() if self.notes is not None else {}
        wire = wire_postfix(notes)
        in_flight = {"in_flight": self.in_flight} if self.counts_in_flight else {}
        self.bar.set_postfix(
            ok=self.done - self.failed, failed=self.failed, **in_flight,
            tok_s=f"{self.tokens / max(now - self.started_at, 1e-9):.0f}", **per_endpoint, **wire, refresh=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self._figures(time.monotonic())
            self.bar.close()


# --- executors -------------------------------------------------------------------------------


Prior = BlocksState
"""Records an interrupted run left beside the output, not yet in it: the block files in
``OUT.parts/`` (:func:`~aidsafe.outputs.scan_blocks`), which every executor resumes alike."""


def blocks_prior(job: FileJob[Any, Any], output: Path) -> Prior:
    """What an interrupted block-writing run left beside ``output`` (nothing when no folder is there)."""
    return scan_blocks(blocks_dir(output), model=job.record_model, what=job.what)


def discard_blocks(output: Path) -> None:
    """``--overwrite``: the block folder goes with the output."""
    shutil.rmtree(blocks_dir(output), ignore_errors=True)


@dataclass
class Work:
    """What :func:`run_job` hands an executor: everything decided, the output ready."""

    output: Path
    concurrency: int
    """Items in flight (per worker, for an executor with several)."""
    skip: frozenset[str]
    """Ids that already have a record (the executor runs every other item of the input)."""
    total: int
    """Items in the input."""
    todo: int
    """Items to run."""
    pending_ids: set[str]
    """Their ids (collected only for an executor that asks, ``wants_ids``)."""
    cache: Path | None
    """The response cache (made already), or None (``--no-cache``)."""
    cache_read: bool
    """False with ``retry_failed``: the cache is written, not read."""
    models: ModelPool
    """The job's models, answered from the cache (for items run in this process)."""
    prior: Prior
    meter: _Meter
    write: Callable[[Any], None]
    """Append one record to the output (flushed) and count it: for records that come back to this process."""
    stamp: Stamp
    """What every record of the run carries: the executor sets it on each record, wherever it is
    made (``stamp.apply(record, item)``), before it is written."""


@dataclass
class Executed:
    """What an executor reports of a run (its records are written, the output whole)."""

    done: int | None = None
    """Items run this time, None: as many as were written through :attr:`Work.write`."""
    tokens: int | None = None
    cache_hits: int = 0
    """Calls answered from the response cache elsewhere (workers in other processes)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Run figures (``JobRun.extra``): the executor's own, the endpoints, how requests travelled."""


class Executor(Protocol):
    """Where a file job's items run. :func:`run_job` does the rest (lock, configuration, resume,
    sidecar, progress, Ctrl-C) and calls these in this order."""

    name: str
    """``local``, ``ray``: named in progress and in errors."""
    wants_ids: bool
    """Whether :attr:`Work.pending_ids` must be collected."""

    def prior(self, job: FileJob[Any, Any], output: Path) -> Prior:
        """Records an interrupted run of this executor left beside ``output`` (none: an empty ``Prior``)."""
        ...

    def discard(self, output: Path) -> None:
        """``overwrite``: delete what this executor keeps beside ``output``."""
        ...

    def session(self, job: FileJob[Any, Any], output: Path, needed: bool) -> contextlib.AbstractContextManager[None]:
        """Hold what the run needs (a cluster), checked before anything is deleted or called;
        ``needed`` is False when no item is left to run."""
        ...

    async def execute(self, job: FileJob[Any, Any], pending: Callable[[], Iterator[Any]], work: Work) -> Executed:
        """Run the items of ``pending()`` (the input without ``work.skip``) until each has its record,
        stamped (``work.stamp.apply(record, item)``), in ``work.output``. Ctrl-C: raise
        ``KeyboardInterrupt`` or ``CancelledError``."""
        ...

    def written(self, work: Work) -> int:
        """Records of this run that are safe (after Ctrl-C)."""
        ...

    def where(self, output: Path) -> str:
        """Where the records are (for the Ctrl-C message)."""
        ...


class LocalExecutor:
    """Items run in this process through the job's async ``run``, ``concurrency`` in flight; records are
    appended to the output as they finish."""

    name = "local"
    wants_ids = False

    def prior(self, job: FileJob[Any, Any], output: Path) -> Prior:
        """Records an interrupted Ray run left in ``OUT.parts/``: resumed as the Ray engine resumes them."""
        return blocks_prior(job, output)

    def discard(self, output: Path) -> None:
        discard_blocks(output)

    def session(self, job: FileJob[Any, Any], output: Path, needed: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def execute(self, job: FileJob[Any, Any], pending: Callable[[], Iterator[Any]], work: Work) -> Executed:
        endpoints_before = all_endpoint_stats()  # routers live as long as the process: count this run only

        async def run(item: Any) -> Any:
            return work.stamp.apply(await job.run(item, work.models), item)

        results = bounded(pending(), run, work.concurrency, work.meter.started)
        async with contextlib.aclosing(results):
            async for record in results:
                work.write(record)
        folder = blocks_dir(work.output)
        if folder.is_dir():  # an interrupted Ray run's blocks: their records join the output, each id once
            merge_blocks(work.output, folder, model=job.record_model, what=job.what)
        extra: dict[str, Any] = {}
        endpoints = _endpoint_figures(endpoints_before, job.models.endpoint_stats())
        if endpoints:
            extra["endpoints"] = endpoints
        extra.update({key: notes for key, notes in job.models.wire_notes().items() if notes})
        return Executed(extra=extra)

    def written(self, work: Work) -> int:
        return work.meter.done

    def where(self, output: Path) -> str:
        return str(output)


async def run_job(
    job: FileJob[ItemT, RecordT],
    output: str | Path,
    options: JobOptions | None = None,
    *,
    sidecar_of: str | Path | None = None,
) -> Summary:
    """Run ``job`` into the JSONL file ``output``, its items where ``options.executor`` runs them;
    see the module docstring for what that includes.

    The summary goes to ``<sidecar_of>.summary.json`` (default: the output's), with the
    configuration. Returns the job's summary.
    """
    options = options or JobOptions()
    executor: Executor = options.executor or LocalExecutor()
    output = Path(output)
    sidecar_owner = Path(sidecar_of) if sidecar_of is not None else output
    concurrency = job.default_concurrency if options.concurrency is None else options.concurrency
    if concurrency < 1:
        raise AidsafeError("concurrency must be at least 1")
    config = {"job": job.name, **job.config()}
    stamp = Stamp.of(config)
    with OutputLock(output):
        prior = executor.prior(job, output) if not options.overwrite else Prior()
        remembered = False
        if not options.overwrite and ((output.exists() and output.stat().st_size > 0) or prior.files):  # else no record to protect
            remembered = refuse_other_config(output, sidecar_owner, config)

        def same_config(scanned: OutputState) -> None:
            """The records already written (and the blocks) carry this run's digest, if any (before any repair)."""
            found = [(scanned.config, output, scanned.config_line or 0)] if scanned.config is not None else []
            found += [(digest, *where) for digest, where in prior.configs.items() if digest != scanned.config]
            _refuse_other_records(output, sidecar_owner, stamp, found, remembered, max(scanned.format, prior.format))

        state = (
            OutputState() if options.overwrite
            else scan_output(output, repair=True, model=job.record_model, what=job.what, prompts=True, check=same_config)
        )
        done = state.done | prior.done
        failed = (state.failed | prior.failed) - done
        skip = frozenset(done if options.retry_failed else done | failed)
        stored = {**prior.prompts, **state.prompts}
        item_prompt: Callable[[ItemT], str] | None = getattr(job, "item_prompt", None)
        resumed = (
            ResumeCheck(stored, str(getattr(job, "input_name", "the input")), output, others=prior.files)
            if item_prompt is not None and stored else None
        )

        total = 0
        inputs: dict[str, None] = {}
        """The configuration digests of the input's records (a judge's generated file), in order."""

        def selected(problems: list[InputError] | None = None, check: ResumeCheck | None = None, count: bool = False) -> Iterator[ItemT]:
            """The items that have no record yet (``check`` sees every item; ``count`` counts them in
            ``total`` and their records' configurations in ``inputs``)."""
            nonlocal total
            for item in job.items(problems):
                item_id = job.item_id(item)
                total += count
                if count:
                    inputs.update(dict.fromkeys(input_configs(item)))
                if check is not None and item_prompt is not None:
                    check.item(item_id, item_prompt(item))
                if item_id not in skip:
                    yield item

        # one pass validates the whole input (a bad file is refused before any model call, before
        # overwrite deletes anything and before any record is written), checks it against the
        # records already written, and counts what is left to do
        problems: list[InputError] = []
        pending_ids: set[str] = set()
        todo = 0
        for item in selected(problems, resumed, count=True):
            todo += 1
            if executor.wants_ids:
                pending_ids.add(job.item_id(item))
        if resumed is not None:
            resumed.raise_if_any()
        if problems and options.on_input_problems is not None:
            options.on_input_problems(problems)
        cache_file = cache_path(output)
        with executor.session(job, output, todo > 0):  # a cluster checked before anything is deleted
            if options.overwrite:
                for stale in (output, cache_file, Path(f"{cache_file}-wal"), Path(f"{cache_file}-shm")):
                    stale.unlink(missing_ok=True)
                executor.discard(output)
            kept = len(done | failed)
            if options.retry_failed and state.failed:
                kept -= drop_records(output, state.failed, model=job.record_model, what=job.what)
            written_by = stamp.written_by(tuple(inputs)).model_dump()
            write_sidecar(sidecar_owner, {"output": str(sidecar_owner), "complete": False, "config": config, "written_by": written_by})
            run = JobRun(unit=job.unit, skipped=len(skip), repaired_last_line=state.repaired, skipped_input_lines=len(problems))
            cache = ResponseCache(cache_file, read=not options.retry_failed) if options.cache else None
            desc = job.name if executor.name == "local" else f"{job.name} ({executor.name})"
            meter = _Meter(todo, options.progress, desc, job.unit, job.models.endpoint_stats, job.models.wire_notes)
            started, cpu_started = time.monotonic(), time.process_time()
            # a local append-only file, written in order as records finish: blocking writes are brief
            with output.open("a", encoding="utf-8") as sink:  # noqa: ASYNC230

                def write(record: Any) -> None:
                    sink.write(record.model_dump_json() + "\n")
                    sink.flush()
                    meter.finished(job.failed(record), job.tokens(record))

                work = Work(
                    output=output, concurrency=concurrency, skip=skip, total=total, todo=todo, pending_ids=pending_ids,
                    cache=cache_file if cache is not None else None, cache_read=not options.retry_failed,
                    models=job.models.cached(cache) if cache is not None else job.models, prior=prior, meter=meter, write=write,
                    stamp=stamp,
                )
                try:
                    executed = await executor.execute(job, selected, work)
                except (KeyboardInterrupt, asyncio.CancelledError):
                    raise JobInterrupted(executor.where(output), kept + executor.written(work), kept + todo) from None
                finally:
                    meter.close()
                    if cache is not None:
                        run.cache_hits = cache.hits
                        cache.close()
                    await job.models.aclose()
        run.done = meter.done if executed.done is None else executed.done
        run.tokens = meter.tokens if executed.tokens is None else executed.tokens
        run.cache_hits += executed.cache_hits
        run.seconds = time.monotonic() - started
        run.cpu_seconds = time.process_time() - cpu_started
        run.extra.update(executed.extra)
        summary = job.summarize(output, run)
        write_sidecar(sidecar_owner, {**summary.as_dict(), "complete": True, "config": config, "written_by": written_by})
    return summary
