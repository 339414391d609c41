"""``--engine ray``: Ray Data on a local two-CPU cluster (one for the module).

Checked: every input id exactly once in the merged output, the same records as the local engine
(fake backend; JSONL, Parquet and a saved dataset folder), a resume that skips the ids already in
the output and in the block folder (model calls counted by a simulated OpenAI-compatible server in
its own process, reached over HTTP from the actors), and an actor killed in the middle of its
first batch (Ray restarts it and runs the batch again): nothing lost, nothing twice. A prompt
that kills its actor every time: bounded retries, a ``worker_crash`` record for it and ``ok`` ones
for the rest; with no retries left, an error naming it and the finished batches merged. Each
actor's share of an endpoint's limit. A cluster that cannot see the output's folder or the input
is refused before any model call; and a run over Ray Client (``ray://``) against a head started
for the test. ``aidsafe judge`` (records, pairs, pairwise) and ``aidsafe pairs`` with ``--engine
ray``: the local engine's records, a resume, the remembered configuration.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_extras

from aidsafe.cli import main
from aidsafe.errors import AidsafeError, ConfigError
from aidsafe.models import FakeChatModel, ModelSettings
from aidsafe.outputs import read_sidecar
from aidsafe.records import config_sha256
from aidsafe.testing import SimServer

require_extras("ray", extra="the [ray] extra (pip install 'aidsafe[ray]')")

import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402

from aidsafe.engines.ray_data import RayOptions, generate_ray, parts_dir  # noqa: E402

# the actors live in other processes, which cannot import this test module: ship its classes by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROMPTS = [f"How do I keep item number {i} safe at home?" for i in range(14)]


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    """One local Ray cluster for the module (Ray starts slowly); the engine joins it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def _write_jsonl(path: Path, rows: list[dict[str, Any]], blank_after: int | None = None) -> Path:
    lines = [json.dumps(row) for row in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")  # a blank line is no record: the ids are record numbers all the same
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _generate(*args: str | Path) -> int:
    return main(["generate", *map(str, args), "--no-progress"])


def _by_id(path: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_id = {record["id"]: record for record in records}
    assert len(by_id) == len(records), "an id appears twice"
    return by_id


def test_fake_backend_gives_the_local_engines_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in PROMPTS], blank_after=3)
    out, local = tmp_path / "out.jsonl", tmp_path / "local.jsonl"
    assert _generate(src, "-o", out, "--backend", "fake", "--engine", "ray", "--ray-actors", "2", "--ray-batch-size", "4") == 0
    printed = capsys.readouterr().err
    assert _generate(src, "-o", local, "--backend", "fake") == 0
    ray_records, local_records = _by_id(out), _by_id(local)
    assert set(ray_records) == {str(n) for n in range(1, 15)}  # record numbers, the blank line 4 not counted
    assert ray_records == local_records
    assert not parts_dir(out).exists()  # merged, then the blocks deleted
    sidecar, local_sidecar = read_sidecar(out) or {}, read_sidecar(local) or {}
    assert sidecar["complete"] is True and sidecar["records"] == len(PROMPTS) and sidecar["config"] == local_sidecar["config"]
    assert sidecar["run"]["engine"] == "ray" and sidecar["run"]["prompts"] == len(PROMPTS) and sidecar["run"]["blocks_merged"] == 4
    # the actors stamp each record as the local engine does: the run's configuration digest (equal records above)
    assert {r["written_by"]["config"] for r in ray_records.values()} == {config_sha256(sidecar["config"])}
    assert f"wrote {out}: records: {len(PROMPTS)} (ok {len(PROMPTS)}, failed 0)" in printed
    assert f"this run: {len(PROMPTS)} prompts in" in printed

    # the same command again: everything is done, nothing runs (no Ray execution), nothing changes
    before = out.read_bytes()
    assert _generate(src, "-o", out, "--backend", "fake", "--engine", "ray") == 0
    assert out.read_bytes() == before
    assert f"this run: 0 prompts in 0.0 s, {len(PROMPTS)} already done" in capsys.readouterr().err
    # another configuration is refused before anything is touched, as with the local engine
    assert _generate(src, "-o", out, "--backend", "fake", "--engine", "ray", "--graph", "single") == 2
    assert "graph.name: 'aidsafe' -> 'single'" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_parquet_and_dataset_folder_inputs(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS[:6])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    src_jsonl = _write_jsonl(tmp_path / "in.jsonl", rows)
    out, local = tmp_path / "out.parquet", tmp_path / "local.jsonl"
    args = ["-o", out, "--format", "parquet", "--backend", "fake", "--engine", "ray", "--ray-actors", "1", "--ray-batch-size", "4"]
    assert _generate(tmp_path / "in.parquet", *args) == 0
    assert _generate(src_jsonl, "-o", local, "--backend", "fake") == 0
    assert _by_id(tmp_path / "out.parquet.jsonl") == _by_id(local)  # the working JSONL, kept beside the Parquet output
    assert pq.read_table(out).num_rows == len(rows) and (read_sidecar(out) or {})["complete"] is True

    # a saved dataset without an id column: row numbers, exactly as the local engine numbers them
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"prompt": PROMPTS[6:11]}).save_to_disk(str(folder))
    out_ds, local_ds = tmp_path / "out_ds.jsonl", tmp_path / "local_ds.jsonl"
    assert _generate(folder, "-o", out_ds, "--backend", "fake", "--engine", "ray", "--ray-actors", "1", "--ray-batch-size", "2") == 0
    assert _generate(folder, "-o", local_ds, "--backend", "fake") == 0
    assert set(_by_id(out_ds)) == {"1", "2", "3", "4", "5"}
    assert _by_id(out_ds) == _by_id(local_ds)


def test_resume_over_http_skips_the_ids_already_written(tmp_path: Path) -> None:
    """First run: 5 prompts, as if an earlier run had stopped; its records are then put in the
    block folder (where an interrupted Ray run leaves them). The second run calls the model for
    the other 9 prompts only (4 calls each through the aidsafe graph: the simulated deliberator
    agrees at once) and merges all 14, each once."""
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    out = tmp_path / "out.jsonl"
    with SimServer(latency=0.01, process=True) as server:
        common = ["-o", out, "--base-url", server.url, "--model", "sim", "--engine", "ray", "--ray-batch-size", "3", "--no-cache", "--concurrency", "3"]
        assert _generate(src, *common, "--limit", "5") == 0
        assert server.stats()["requests"] == 5 * 4
        parts = parts_dir(out)
        parts.mkdir()
        out.rename(parts / "r0001-0123456789abcdef.jsonl")
        assert _generate(src, *common) == 0
        assert server.stats()["requests"] == len(PROMPTS) * 4
    records = _by_id(out)
    assert set(records) == {f"q{i}" for i in range(len(PROMPTS))}
    assert all(record["status"] == "ok" for record in records.values())
    run = (read_sidecar(out) or {})["run"]
    assert run["skipped"] == 5 and run["prompts"] == len(PROMPTS) - 5
    assert run["structured_output"] == {server.url: {"mode": "json_schema", "source": "auto"}}  # as the actors sent it
    assert not parts.exists()


class _CrashOnce(FakeChatModel):
    """A fake model whose process dies (``os._exit``) at its 7th call, once per marker file."""

    def __init__(self, settings: ModelSettings, marker: str) -> None:
        super().__init__(settings)
        self.marker = marker
        self.count = 0

    async def complete(self, messages: list[dict[str, str]], **options: Any) -> Any:
        self.count += 1
        if self.count == 7:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)  # a killed actor: no cleanup, no exception Ray could see
        return await super().complete(messages, **options)


class CrashOnceFactory:
    """Model factory (it must pickle: the actors build their models with it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __call__(self, settings: ModelSettings) -> FakeChatModel:
        return _CrashOnce(settings, self.marker)


def test_an_actor_killed_mid_batch_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    out = tmp_path / "out.jsonl"
    marker = tmp_path / "crashed"
    started = time.monotonic()
    summary = generate_ray(
        src, out, settings=ModelSettings(backend="fake"), model_factory=CrashOnceFactory(marker), concurrency=2, progress=False,
        ray_options=RayOptions(actors=2, batch_size=4),
    )
    assert marker.exists(), "no actor was killed"
    records = _by_id(out)
    assert set(records) == {f"k{i}" for i in range(len(PROMPTS))}
    assert summary.ok == len(PROMPTS) and summary.run["prompts"] == len(PROMPTS)
    assert summary.run["cache_hits"] > 0  # the calls the killed attempt made were not paid twice
    assert time.monotonic() - started < 60
    # the content is the fake model's, as the local engine writes it (the cache counts aside)
    local = tmp_path / "local.jsonl"
    assert main(["generate", str(src), "-o", str(local), "--backend", "fake", "--no-progress"]) == 0
    assert {i: _without_usage(r) for i, r in records.items()} == {i: _without_usage(r) for i, r in _by_id(local).items()}


def _without_usage(value: Any) -> Any:
    """A record without its usage counts (which count the replies answered from the cache)."""
    if isinstance(value, dict):
        return {k: _without_usage(v) for k, v in value.items() if k != "usage"}
    if isinstance(value, list):
        return [_without_usage(v) for v in value]
    return value


# --- judge and pairs on Ray --------------------------------------------------------------------


def _generation(tmp_path: Path, name: str, graph: str = "aidsafe", behaviour: str = "agree") -> Path:
    src = _write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"g{i}", "prompt": p} for i, p in enumerate(PROMPTS[:6])])
    out = tmp_path / name
    assert _generate(src, "-o", out, "--backend", "fake", "--model", behaviour, "--graph", graph) == 0
    return out


def test_judge_on_ray_gives_the_local_engines_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``aidsafe judge --engine ray``: scored records (a first run of 3, then a resume), both
    sides of each pair of an ``aidsafe pairs`` output, and two outputs compared pairwise."""
    gen = _generation(tmp_path, "gen.jsonl")
    ray_flags = ["--backend", "fake", "--no-progress", "--engine", "ray", "--ray-actors", "2", "--ray-batch-size", "2"]
    judged, local = tmp_path / "judged.jsonl", tmp_path / "judged_local.jsonl"
    assert main(["judge", str(gen), "-o", str(judged), *ray_flags, "--limit", "3"]) == 0
    assert main(["judge", str(gen), "-o", str(judged), *ray_flags]) == 0
    assert main(["judge", str(gen), "-o", str(local), "--backend", "fake", "--no-progress"]) == 0
    assert _by_id(judged) == _by_id(local) and len(_by_id(judged)) == 6
    gen_digest = config_sha256((read_sidecar(gen) or {})["config"])
    assert {(r["written_by"]["job"], *r["written_by"]["inputs"]) for r in _by_id(judged).values()} == {("judge", gen_digest)}
    sidecar, local_sidecar = read_sidecar(judged) or {}, read_sidecar(local) or {}
    assert sidecar["complete"] is True and sidecar["records"] == 6 and sidecar["config"] == local_sidecar["config"]
    assert sidecar["run"]["engine"] == "ray" and sidecar["run"]["records"] == 3 and sidecar["run"]["skipped"] == 3
    assert not parts_dir(judged).exists()
    # another policy pack is refused before anything runs, as with the local engine
    before = judged.read_bytes()
    capsys.readouterr()
    assert main(["judge", str(gen), "-o", str(judged), *ray_flags, "--policies", "llamaguard3"]) == 2
    assert "another configuration" in capsys.readouterr().err and judged.read_bytes() == before

    # both sides of each pair (an aidsafe pairs output, made locally)
    pairs = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(gen), "-o", str(pairs), "--backend", "fake", "--model", "agree", "--no-progress"]) == 0
    judged_pairs, judged_pairs_local = tmp_path / "jp.jsonl", tmp_path / "jp_local.jsonl"
    assert main(["judge", str(pairs), "-o", str(judged_pairs), *ray_flags]) == 0
    assert main(["judge", str(pairs), "-o", str(judged_pairs_local), "--backend", "fake", "--no-progress"]) == 0
    assert _by_id(judged_pairs) == _by_id(judged_pairs_local) and (read_sidecar(judged_pairs) or {})["run"]["engine"] == "ray"

    # two outputs of the same prompts, compared pairwise
    other = _generation(tmp_path, "other.jsonl", graph="single", behaviour="default")
    verdicts, verdicts_local = tmp_path / "verdicts.jsonl", tmp_path / "verdicts_local.jsonl"
    assert main(["judge", str(gen), "--against", str(other), "-o", str(verdicts), *ray_flags]) == 0
    assert main(["judge", str(gen), "--against", str(other), "-o", str(verdicts_local), "--backend", "fake", "--no-progress"]) == 0
    assert _by_id(verdicts) == _by_id(verdicts_local) and len(_by_id(verdicts)) == 6


def test_pairs_on_ray_gives_the_local_engines_records(tmp_path: Path) -> None:
    gen = _generation(tmp_path, "gen.jsonl")
    out, local = tmp_path / "pairs.jsonl", tmp_path / "pairs_local.jsonl"
    common = ["--backend", "fake", "--model", "agree", "--no-progress"]
    assert main(["pairs", str(gen), "-o", str(out), *common, "--engine", "ray", "--ray-actors", "2", "--ray-batch-size", "2"]) == 0
    assert main(["pairs", str(gen), "-o", str(local), *common]) == 0
    pairs = _by_id(out)
    assert pairs == _by_id(local) and set(pairs) == {f"g{i}" for i in range(6)}
    assert all(p["status"] == "ok" and p["rejected"] is not None for p in pairs.values())
    sidecar = read_sidecar(out) or {}
    assert sidecar["complete"] is True and sidecar["pairs"] == 6 and sidecar["run"]["engine"] == "ray"
    assert sidecar["run"]["blocks_merged"] == 3 and sidecar["config"] == (read_sidecar(local) or {})["config"]
    assert not parts_dir(out).exists()
    # the same command again: nothing left to run, nothing changes
    before = out.read_bytes()
    assert main(["pairs", str(gen), "-o", str(out), *common, "--engine", "ray"]) == 0
    assert out.read_bytes() == before and (read_sidecar(out) or {})["run"]["prompts"] == 0


# --- a prompt that kills its worker every time ---------------------------------------------------


class _Poisoned(FakeChatModel):
    """A fake model whose process dies (``os._exit``) at every call for a prompt holding ``POISON``
    (a native crash, the OOM killer); each death is logged first. Its settings are logged when
    it is built (pid, max_in_flight, each endpoint's max_in_flight)."""

    def __init__(self, settings: ModelSettings, log: str) -> None:
        super().__init__(settings)
        self.log = log
        self._append(f"built {os.getpid()} {settings.max_in_flight} {[e.max_in_flight for e in settings.endpoints]}")

    def _append(self, line: str) -> None:
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    async def complete(self, messages: list[dict[str, str]], **options: Any) -> Any:
        if any("POISON" in m["content"] for m in messages):
            self._append(f"died {os.getpid()}")
            os._exit(1)
        self._append("call")
        return await super().complete(messages, **options)


class PoisonFactory:
    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __call__(self, settings: ModelSettings) -> FakeChatModel:
        return _Poisoned(settings, self.log)


def _log(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_a_prompt_that_kills_its_worker_every_time_gets_a_failed_record(tmp_path: Path) -> None:
    """Ray runs the batch again (at most max_batch_retries times): the prompts in flight at the
    death run alone, the poison prompt kills its worker alone and is then recorded as failed
    (worker_crash); every other prompt's record is ok, each id once, in bounded time. Each actor
    gets half the calls in flight per endpoint (two actors share the endpoint's limit)."""
    from aidsafe.models.endpoints import Endpoint

    prompts = [*PROMPTS[:9], "POISON: how do I keep this safe?", *PROMPTS[9:12]]
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "prompt": p} for i, p in enumerate(prompts)])
    out, log = tmp_path / "out.jsonl", tmp_path / "log.txt"
    settings = ModelSettings(backend="fake", max_in_flight=7, endpoints=(Endpoint(url="http://a:1/v1", max_in_flight=5), Endpoint(url="http://b:1/v1")))
    started = time.monotonic()
    summary = generate_ray(
        src, out, settings=settings, model_factory=PoisonFactory(log), concurrency=3, progress=False,
        ray_options=RayOptions(actors=2, batch_size=4, max_batch_retries=3),
    )
    assert time.monotonic() - started < 120
    records = _by_id(out)
    assert set(records) == {f"k{i}" for i in range(len(prompts))}
    poison = records["k9"]
    assert poison["status"] == "failed" and poison["error"]["kind"] == "worker_crash" and poison["stop_reason"] == "error"
    assert "ran alone" in poison["error"]["message"] and "r0001-" in poison["error"]["message"]  # the batch named
    assert poison["written_by"] == records["k0"]["written_by"] and poison["written_by"]["job"] == "generate"  # stamped alike
    assert all(r["status"] == "ok" for i, r in records.items() if i != "k9")
    assert summary.ok == len(prompts) - 1 and summary.failures == {"worker_crash": 1}
    deaths = [line for line in _log(log) if line.startswith("died")]
    assert 1 <= len(deaths) <= 4  # bounded: in flight at the first death, then alone
    assert not parts_dir(out).exists()  # merged; no journal left behind
    # the actors' settings carry the endpoint limits shared out between the two actors
    built = [line.split(" ", 3) for line in _log(log) if line.startswith("built")]
    actors = {(limit, endpoints) for _, pid, limit, endpoints in built if int(pid) != os.getpid()}
    assert actors == {("4", "[3, None]")}  # ceil(7/2), ceil(5/2); the other endpoint takes the run's


def test_when_ray_gives_up_on_a_batch_the_run_stops_naming_its_prompts(tmp_path: Path) -> None:
    """No retries allowed: the first death ends the run with an error naming the prompts in
    flight, and every batch finished before is merged into the output."""
    prompts = [*PROMPTS[:7], "POISON: and this?"]
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"k{i}", "prompt": p} for i, p in enumerate(prompts)])
    out, log = tmp_path / "out.jsonl", tmp_path / "log.txt"
    with pytest.raises(AidsafeError) as caught:
        generate_ray(
            src, out, settings=ModelSettings(backend="fake"), model_factory=PoisonFactory(log), concurrency=2, progress=False,
            ray_options=RayOptions(actors=1, batch_size=2, max_batch_retries=0),
        )
    message = str(caught.value)
    assert "the Ray run stopped" in message and "'k7'" in message and "run the same command" in message
    assert len([line for line in _log(log) if line.startswith("died")]) == 1
    records = _by_id(out)  # the batches finished before the last one started (one actor, two batches at a time)
    assert {"k0", "k1", "k2", "k3"} <= set(records) and "k7" not in records
    assert all(r["status"] == "ok" for r in records.values())


def test_journal_history_names_the_prompts_in_flight_at_each_death(tmp_path: Path) -> None:
    from aidsafe.engines.ray_data import BatchJournal, JournalHistory, crash_suspects, journal_path

    journal = BatchJournal(journal_path(tmp_path / "r0001-ab.jsonl"))
    assert journal.history().attempts == 0
    journal.note("attempt")
    for kind, prompt_id in [("start", "a"), ("start", "b"), ("end", "a"), ("start", "c")]:  # died with b and c in flight
        journal.note(kind, prompt_id)
    assert journal.history() == JournalHistory(attempts=1, suspects=["b", "c"])
    journal.remove()
    assert journal.history().attempts == 0  # a batch that finished leaves no journal
    lines = ["attempt", 'start\t"a"', 'start\t"b"', 'end\t"a"', 'start\t"c"',  # died with b and c in flight
             "attempt", 'solo\t"b"', 'end\t"b"', 'solo\t"c"',  # died with c alone
             "attempt", 'start\t"d"', 'end\t"to']  # died with d in flight (a torn last line)
    journal.path.write_text("\n".join(lines), encoding="utf-8")
    history = journal.history()
    assert history.attempts == 3 and history.killed_alone == ["c"] and history.suspects == ["d"]
    assert crash_suspects(tmp_path) == ["c", "d"]
    journal.remove()
    assert not journal.path.exists() and crash_suspects(tmp_path) == []


def test_per_actor_limits_add_up_to_the_endpoints_limit() -> None:
    from aidsafe.engines.ray_data import per_actor_settings
    from aidsafe.models.endpoints import Endpoint

    for limit in (1, 2, 7, 256):
        for actors in (1, 2, 3, 8, 300):
            settings = ModelSettings(backend="openai", model="m", max_in_flight=limit, endpoints=(Endpoint(url="http://a/v1", max_in_flight=limit),))
            if actors > limit:  # one call each would already be more than the endpoint takes
                with pytest.raises(ConfigError, match=f"--ray-actors {actors} is more than the {limit} calls"):
                    per_actor_settings(settings, actors)
                continue
            share = per_actor_settings(settings, actors)
            assert share.max_in_flight == share.endpoints[0].max_in_flight >= 1
            assert limit <= share.max_in_flight * actors <= limit + actors - 1 < 2 * limit
    assert per_actor_settings(ModelSettings(), 3).endpoints == ()


# --- a cluster that does not share the output's folder --------------------------------------------


def _blind_probe(marker: str, token: str, reply: str, input_path: str) -> dict[str, Any]:
    """A node of another machine: it sees neither the marker nor anything beside it."""
    return {"host": "elsewhere", "seen": False, "wrote": False, "input": False}


def _no_input_probe(marker: str, token: str, reply: str, input_path: str) -> dict[str, Any]:
    from aidsafe.engines import ray_data

    result = ray_data._probe(marker, token, reply, input_path + ".missing")
    return {**result, "host": "elsewhere"}


class _Recording(FakeChatModel):
    def __init__(self, settings: ModelSettings, log: str) -> None:
        super().__init__(settings)
        self.log = log

    async def complete(self, messages: list[dict[str, str]], **options: Any) -> Any:
        os.close(os.open(self.log, os.O_CREAT | os.O_WRONLY))
        return await super().complete(messages, **options)


class RecordingFactory:
    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __call__(self, settings: ModelSettings) -> FakeChatModel:
        return _Recording(settings, self.log)


def test_a_cluster_that_cannot_see_the_output_folder_is_refused_before_any_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aidsafe.engines import ray_data

    src = _write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in PROMPTS[:3]])
    # this cluster (this machine) sees the folder and the input: the check passes and leaves nothing behind
    ray_data.check_shared_paths(tmp_path, "out.jsonl", src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]

    out, log = tmp_path / "out.jsonl", tmp_path / "calls.txt"
    monkeypatch.setattr(ray_data, "_probe", _blind_probe)  # shipped by value: the task runs this one
    with pytest.raises(AidsafeError) as caught:
        generate_ray(src, out, settings=ModelSettings(backend="fake"), model_factory=RecordingFactory(log), progress=False)
    message = str(caught.value)
    assert f"node elsewhere does not see {tmp_path}/" in message and "same path" in message
    assert not log.exists()  # no model call
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing written: no output, sidecar, cache or block folder

    monkeypatch.setattr(ray_data, "_probe", _no_input_probe)
    with pytest.raises(AidsafeError, match=f"node elsewhere does not see the input {src}"):
        generate_ray(src, out, settings=ModelSettings(backend="fake"), model_factory=RecordingFactory(log), progress=False)
    assert not log.exists()


# --- Ray Client (ray://) ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_client_address_runs_the_pipeline_on_the_cluster(tmp_path: Path) -> None:
    """``RAY_ADDRESS=ray://host:port``: a head started here with a Ray Client server; ``aidsafe
    generate`` in another process joins it as a client. Ray Data cannot drive a pipeline from a
    client, so a task on the cluster does; the file-system probe passes (same machine), and the
    blocks are merged into the output here."""
    import signal
    import socket
    import subprocess
    import tempfile

    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"c{i}", "prompt": p} for i, p in enumerate(PROMPTS[:5])])
    out = tmp_path / "out.jsonl"
    client_port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # Ray 2.60 turns token auth on for a new cluster; not what this tests
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={_free_port()}", f"--ray-client-server-port={client_port}",
         "--num-cpus=2", "--include-dashboard=false", f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.5)
        done = subprocess.run(
            [sys.executable, "-m", "aidsafe", "generate", str(src), "-o", str(out), "--backend", "fake", "--engine", "ray",
             "--ray-batch-size", "2", "--no-progress"],
            env={**env, "RAY_ADDRESS": f"ray://127.0.0.1:{client_port}"}, capture_output=True, text=True, timeout=240,
        )
        if done.returncode != 0:
            logs = sorted(Path(temp_dir).glob("session_*/logs/ray_client_server*"))
            tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in logs)
            raise AssertionError(done.stderr[-3000:] + "\n" + tails)
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head's own processes; its workers exit with their raylet
        head.wait()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
    records = _by_id(out)
    assert set(records) == {f"c{i}" for i in range(5)} and all(r["status"] == "ok" for r in records.values())
    sidecar = read_sidecar(out) or {}
    assert sidecar["complete"] is True and sidecar["run"]["engine"] == "ray" and sidecar["run"]["prompts"] == 5
    assert sidecar["run"]["tokens_per_s"] > 0  # followed from the blocks the cluster wrote
    assert not parts_dir(out).exists()


def test_ray_client_join_is_tried_again_when_the_proxy_fails_to_start_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head's Ray Client proxy sometimes fails to start the per-client server; a new try gets a
    new one. Bounded: after the last try the error names the address."""
    from aidsafe.engines import ray_data

    calls: list[int] = []

    def failing_init(**_: Any) -> None:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionAbortedError("Initialization failure from server:\nRuntimeError: Starting Ray client server failed.")

    monkeypatch.setattr(ray_data.ray, "init", failing_init)
    monkeypatch.setattr(ray_data.time, "sleep", lambda _s: None)
    ray_data._init_with_retries("ray://127.0.0.1:1")
    assert len(calls) == 2

    calls.clear()
    monkeypatch.setattr(ray_data, "CLIENT_CONNECT_ATTEMPTS", 3)

    def always_failing(**_: Any) -> None:
        calls.append(1)
        raise ConnectionAbortedError("RuntimeError: Starting Ray client server failed.")

    monkeypatch.setattr(ray_data.ray, "init", always_failing)
    with pytest.raises(AidsafeError, match=r"ray://127.0.0.1:1 \(RAY_ADDRESS\) after 3 tries: RuntimeError: Starting Ray client server failed"):
        ray_data._init_with_retries("ray://127.0.0.1:1")
    assert len(calls) == 3

    calls.clear()  # a plain cluster address is not a Ray Client proxy: no second try
    with pytest.raises(AidsafeError, match="after 1 tries"):
        ray_data._init_with_retries("127.0.0.1:6379")
    assert len(calls) == 1


def test_ctrl_c_during_a_ray_run_keeps_its_blocks_and_the_same_command_finishes_each_prompt_once(tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it, to ``aidsafe generate --engine ray`` in its own process (joined
    to this module's cluster): exit status 130, how many records are safe and where, no traceback;
    the blocks written so far stay in ``OUT.parts/``; the same command then runs only the rest and
    merges every prompt once."""
    import signal
    import subprocess

    rows = [{"id": f"q{i}", "prompt": f"{p} (case {i})"} for i, p in enumerate(PROMPTS * 3)]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    with SimServer(latency=0.3, process=True) as server:
        cli = ["generate", str(src), "-o", str(out), "--base-url", server.url, "--model", "sim", "--engine", "ray",
               "--ray-actors", "1", "--ray-batch-size", "2", "--concurrency", "2", "--no-cache", "--no-progress"]
        proc = subprocess.Popen([sys.executable, "-m", "aidsafe", *cli], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            parts = parts_dir(out)
            while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("*.jsonl")) if parts.is_dir() else []) < 2:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it was interrupted"
            assert parts.is_dir() and len(list(parts.glob("*.jsonl"))) >= 2, "no 2 blocks within 120 s"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        said = re.search(rf"interrupted: (\d+) of {len(rows)} records are safe in .*; run the same command to continue", err)
        assert said is not None, err
        # a block the cancelled task was writing may still land after the message: blocks are whole files, never lost
        kept = sum(1 for part in parts.glob("*.jsonl") for line in part.read_text(encoding="utf-8").splitlines() if line.strip())
        assert 4 <= int(said.group(1)) <= kept < len(rows)
        # the cancelled run's actor may still finish a call or two: count from when the server is quiet
        settle = time.monotonic() + 30
        calls_before = server.stats()["requests"]
        while time.monotonic() < settle:
            time.sleep(1.5)
            now = server.stats()["requests"]
            if now == calls_before:
                break
            calls_before = now
        assert main(cli) == 0
        resumed_calls = server.stats()["requests"] - calls_before
    records = _by_id(out)
    assert set(records) == {row["id"] for row in rows}
    assert all(record["status"] == "ok" for record in records.values())
    assert resumed_calls <= (len(rows) - kept) * 4 + 2 * 4  # the rest, and at most the batch in flight at Ctrl-C again
    assert (read_sidecar(out) or {})["run"]["skipped"] >= kept
    assert not parts.exists()
