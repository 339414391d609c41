"""``aidsafe generate --engine ray``: Ray Data on a local two-CPU cluster (one for the module).

Checked: every input id exactly once in the merged output, the same records as the local engine
(fake backend; JSONL, Parquet and a saved dataset folder), a resume that skips the ids already in
the output and in the block folder (model calls counted by a simulated OpenAI-compatible server in
its own process, reached over HTTP from the actors), and an actor killed in the middle of its
first batch (Ray restarts it and runs the batch again): nothing lost, nothing twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.models import FakeChatModel, ModelSettings
from aidsafe.outputs import read_records, read_sidecar
from aidsafe.records import Record

if importlib.util.find_spec("ray") is None:
    if os.environ.get("AIDSAFE_REQUIRE_E2E"):
        raise RuntimeError("AIDSAFE_REQUIRE_E2E is set but Ray is not installed (pip install 'aidsafe[ray]')")
    pytest.skip("needs the [ray] extra (ray[data])", allow_module_level=True)

import ray
import ray.cloudpickle

from aidsafe.engines.ray_data import RayOptions, generate_ray, merge_parts, parts_dir

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from sim_server import SimServer  # noqa: E402

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
        lines.insert(blank_after, "")  # ids are line numbers: a blank line shifts them
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
    assert set(ray_records) == {str(n) for n in [1, 2, 3, *range(5, 16)]}  # line numbers, the blank line 4 skipped
    assert ray_records == local_records
    assert not parts_dir(out).exists()  # merged, then the blocks deleted
    sidecar, local_sidecar = read_sidecar(out) or {}, read_sidecar(local) or {}
    assert sidecar["complete"] is True and sidecar["records"] == len(PROMPTS) and sidecar["config"] == local_sidecar["config"]
    assert sidecar["run"]["engine"] == "ray" and sidecar["run"]["prompts"] == len(PROMPTS) and sidecar["run"]["blocks_merged"] == 4
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
    assert set(_by_id(out_ds)) == {"0", "1", "2", "3", "4"}
    assert _by_id(out_ds) == _by_id(local_ds)


def test_resume_over_http_skips_the_ids_already_written(tmp_path: Path) -> None:
    """First run: 5 prompts, as if an earlier run had stopped; its records are then put in the
    block folder (where an interrupted Ray run leaves them). The second run calls the model for
    the other 9 prompts only (4 calls each through the aidsafe graph: the simulated deliberator
    agrees at once) and merges all 14, each once."""
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS)])
    out = tmp_path / "out.jsonl"
    with SimServer(latency=0.01) as server:
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


def _records(tmp_path: Path, behaviour: str, ids: list[str]) -> list[Record]:
    from aidsafe import Pipeline
    from aidsafe.inputs import PromptItem

    pipe = Pipeline("single", "aidsafe5", ModelSettings(backend="fake", model=behaviour))
    return pipe.run([PromptItem(id=i, prompt=f"prompt {i}", source="-", line=1) for i in ids])


def _write(path: Path, records: list[Record]) -> None:
    path.write_text("".join(record.model_dump_json() + "\n" for record in records), encoding="utf-8")


def test_merge_keeps_each_id_once_ok_first_else_the_latest(tmp_path: Path) -> None:
    ok = {r.id: r for r in _records(tmp_path, "default", ["a", "b", "c"])}
    failed = {r.id: r for r in _records(tmp_path, "garbage", ["a", "b", "d"])}
    assert failed["b"].status == "failed" and ok["b"].status == "ok"
    out = tmp_path / "out.jsonl"
    parts = parts_dir(out)
    parts.mkdir()
    _write(out, [ok["a"], failed["b"]])
    _write(parts / "r0001-aa.jsonl", [ok["b"], ok["c"]])
    _write(parts / "r0001-bb.jsonl", [ok["c"]])  # a batch written twice (its first attempt's actor died after the rename)
    _write(parts / "r0002-aa.jsonl", [failed["a"], failed["d"]])  # a rerun of a that failed this time: the ok record stays
    (parts / ".r0003-cc.jsonl.123.tmp").write_text("{\"id\": \"torn", encoding="utf-8")  # a killed writer's temporary file
    from aidsafe.engines.ray_data import scan_parts

    state = scan_parts(parts)
    assert state.done == {"b", "c"} and state.failed == {"a", "d"} and state.last_run == 2 and state.files == 3
    merged = merge_parts(out, parts)
    assert merged.ids == {"a", "b", "c", "d"} and merged.parts == 3 and merged.duplicates == 3
    got = {r.id: r for r in read_records(out, Record)}
    assert len(list(read_records(out, Record))) == 4
    assert got["a"].status == "ok" and got["b"].status == "ok" and got["c"].status == "ok" and got["d"].status == "failed"
    assert not parts.exists()
