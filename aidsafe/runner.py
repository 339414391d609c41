"""One runner for file jobs: ``aidsafe generate``, ``aidsafe judge`` and the jobs to come.

A *file job* turns a stream of input items into one JSON line per item in an output file. The
runner owns everything such a job needs besides the work itself, so every job gets it alike:

- **one live run per output**: ``OUT.lock`` (``fcntl.flock``); a second run is refused at once;
- **the configuration the output was written with** (in the summary sidecar, from the start of
  the run): resuming with a different one is refused with the differences listed, the output
  untouched, unless ``overwrite``;
- **exactly-once resume**: items with a record are skipped; a torn last line is cut; a corrupt
  line in the middle is refused with its ``file:line``; ``retry_failed`` runs the failed items
  again; ``overwrite`` starts over; a job whose items have a prompt (an optional
  ``item_prompt(item)`` method, with an ``input_name``) has every item with a record checked
  against that record's prompt, and an input whose ids name other prompts than the output's is
  refused (:class:`~aidsafe.pairing.ResumeCheck`);
- **the input streamed and validated** in full before the first model call;
- **concurrency**: ``concurrency`` items in flight, records written (and flushed) as they finish;
- **the response cache** (``OUT.cache.sqlite``): the job's models answer a request seen before
  from it, so a resumed run pays only for the calls that were in flight;
- **progress** (done, ok, failed, in flight, tokens/s, ETA) and **the summary sidecar**;
- **Ctrl-C**: :class:`~aidsafe.errors.JobInterrupted` says how many records are safe and that
  the same command continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ._concurrency import bounded
from .errors import AidsafeError, ConfigMismatchError, InputError, JobInterrupted
from .models import ModelPool, ResponseCache
from .models.endpoints import all_stats as all_endpoint_stats
from .outputs import LineModel, OutputLock, OutputState, drop_records, read_sidecar, scan_output, write_sidecar
from .pairing import ResumeCheck

__all__ = ["FileJob", "JobOptions", "JobRun", "Summary", "run_job"]

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
        """What each output line validates as (scans and resumes use it)."""
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


def refuse_other_config(output: Path, sidecar_of: Path, config: dict[str, Any]) -> None:
    """Raise :class:`ConfigMismatchError` when the sidecar of ``sidecar_of`` records a configuration
    other than ``config``; nothing when it records none (written before outputs remembered it)."""
    previous = (read_sidecar(sidecar_of) or {}).get("config")
    if not isinstance(previous, dict):
        return
    differences = config_differences(previous, config)
    if differences:
        listed = "\n".join(f"  {line}" for line in differences)
        raise ConfigMismatchError(
            f"{output} was written with another configuration; resuming would mix records of both:\n{listed}\n"
            "use the same settings to continue, --overwrite to start over, or write to a new output"
        )


def _check_config(output: Path, sidecar_of: Path, config: dict[str, Any]) -> None:
    """Refuse to resume ``output`` with a configuration other than the one it was written with."""
    if output.exists() and output.stat().st_size > 0:  # else no record to protect
        refuse_other_config(output, sidecar_of, config)


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
        self.endpoints = endpoints
        self.notes = notes
        self.started_at = time.monotonic()
        self.shown_at = 0.0
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, failed: bool, tokens: int) -> None:
        self.in_flight -= 1
        self.done += 1
        self.failed += failed
        self.tokens += tokens
        if self.bar is not None:
            now = time.monotonic()
            if now - self.shown_at >= 0.2:  # the figures at most 5 times a second: they cost more than the count
                self._figures(now)
            self.bar.update(1)

    def _figures(self, now: float) -> None:
        self.shown_at = now
        stats = self.endpoints() if self.endpoints is not None else {}
        per_endpoint = {"endpoints": _endpoint_postfix(stats)} if len(stats) > 1 else {}
        notes = self.notes() if self.notes is not None else {}
        wire = wire_postfix(notes)
        self.bar.set_postfix(
            ok=self.done - self.failed, failed=self.failed, in_flight=self.in_flight,
            tok_s=f"{self.tokens / max(now - self.started_at, 1e-9):.0f}", **per_endpoint, **wire, refresh=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self._figures(time.monotonic())
            self.bar.close()


async def run_job(
    job: FileJob[ItemT, RecordT],
    output: str | Path,
    options: JobOptions | None = None,
    *,
    sidecar_of: str | Path | None = None,
) -> Summary:
    """Run ``job`` into the JSONL file ``output``; see the module docstring for what that includes.

    The summary goes to ``<sidecar_of>.summary.json`` (default: the output's), with the
    configuration. Returns the job's summary.
    """
    options = options or JobOptions()
    output = Path(output)
    sidecar_owner = Path(sidecar_of) if sidecar_of is not None else output
    concurrency = job.default_concurrency if options.concurrency is None else options.concurrency
    if concurrency < 1:
        raise AidsafeError("concurrency must be at least 1")
    config = {"job": job.name, **job.config()}
    with OutputLock(output):
        if not options.overwrite:
            _check_config(output, sidecar_owner, config)
        state = (
            OutputState() if options.overwrite
            else scan_output(output, repair=True, model=job.record_model, what=job.what, prompts=True)
        )
        skip = state.done if options.retry_failed else state.done | state.failed
        item_prompt: Callable[[ItemT], str] | None = getattr(job, "item_prompt", None)
        resumed = (
            ResumeCheck(state.prompts, str(getattr(job, "input_name", "the input")), output)
            if item_prompt is not None and state.prompts else None
        )

        def selected(problems: list[InputError] | None = None, check: ResumeCheck | None = None) -> Iterator[ItemT]:
            """The items that have no record yet (``check`` sees every item)."""
            for item in job.items(problems):
                item_id = job.item_id(item)
                if check is not None and item_prompt is not None:
                    check.item(item_id, item_prompt(item))
                if item_id not in skip:
                    yield item

        # one pass validates the whole input (a bad file is refused before any model call, before
        # overwrite deletes anything and before any record is written), checks it against the
        # records already written, and counts what is left to do
        problems: list[InputError] = []
        todo = sum(1 for _ in selected(problems, resumed))
        if resumed is not None:
            resumed.raise_if_any()
        if problems and options.on_input_problems is not None:
            options.on_input_problems(problems)
        cache_file = cache_path(output)
        if options.overwrite:
            for stale in (output, cache_file, Path(f"{cache_file}-wal"), Path(f"{cache_file}-shm")):
                stale.unlink(missing_ok=True)
        kept = state.lines
        if options.retry_failed and state.failed:
            kept -= drop_records(output, state.failed, model=job.record_model, what=job.what)
        write_sidecar(sidecar_owner, {"output": str(sidecar_owner), "complete": False, "config": config})
        run = JobRun(unit=job.unit, skipped=len(skip), repaired_last_line=state.repaired, skipped_input_lines=len(problems))
        cache = ResponseCache(cache_file, read=not options.retry_failed) if options.cache else None
        models = job.models.cached(cache) if cache is not None else job.models
        meter = _Meter(todo, options.progress, job.name, job.unit, job.models.endpoint_stats, job.models.wire_notes)
        endpoints_before = all_endpoint_stats()  # routers live as long as the process: count this run only
        started, cpu_started = time.monotonic(), time.process_time()
        try:
            # a local append-only file, written in order as records finish: blocking writes are brief
            with output.open("a", encoding="utf-8") as sink:  # noqa: ASYNC230
                results = bounded(selected(), lambda item: job.run(item, models), concurrency, meter.started)
                async with contextlib.aclosing(results):
                    async for record in results:
                        sink.write(record.model_dump_json() + "\n")
                        sink.flush()
                        meter.finished(job.failed(record), job.tokens(record))
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise JobInterrupted(str(output), kept + meter.done, kept + todo) from None
        finally:
            meter.close()
            if cache is not None:
                run.cache_hits = cache.hits
                cache.close()
            await job.models.aclose()
        run.done, run.tokens, run.seconds = meter.done, meter.tokens, time.monotonic() - started
        run.cpu_seconds = time.process_time() - cpu_started
        endpoints = _endpoint_figures(endpoints_before, job.models.endpoint_stats())
        if endpoints:
            run.extra["endpoints"] = endpoints
        run.extra.update({key: notes for key, notes in job.models.wire_notes().items() if notes})
        summary = job.summarize(output, run)
        write_sidecar(sidecar_owner, {**summary.as_dict(), "complete": True, "config": config})
    return summary
