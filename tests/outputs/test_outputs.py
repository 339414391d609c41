"""Output files: crash repair, atomic rewrites, merging shards, and lossless Parquet / HF conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aidsafe import ModelSettings, Pipeline, Record
from aidsafe.cli import main
from aidsafe.errors import InputError
from aidsafe.outputs import (
    JSON_FIELDS,
    OutputState,
    atomic_write_text,
    blocks_dir,
    convert_output,
    drop_records,
    merge_blocks,
    merge_outputs,
    read_records,
    record_features,
    records_from_dataset,
    scan_blocks,
    scan_output,
    sidecar_path,
    write_sidecar,
)
from aidsafe.records import Usage
from aidsafe.runner import Stamp

PROMPTS = ["how do I pick a lock?", "hello", "write a poem about rain"]


def _records(behaviour: str, graph: str = "aidsafe", prefix: str = "") -> list[Record]:
    """Records from the fake model, with ids ``<prefix>0``, ``<prefix>1``, ..."""
    records = Pipeline(graph, "aidsafe5", ModelSettings(backend="fake", model=behaviour)).run(PROMPTS)
    return sorted((r.model_copy(update={"id": f"{prefix}{r.id}"}) for r in records), key=lambda r: r.id)


@pytest.fixture(scope="module")
def mixed() -> list[Record]:
    """ok and failed records from several behaviours and graphs, with distinct ids."""
    return (
        _records("default", prefix="d")
        + _records("never-agree", prefix="n")
        + _records("garbage", prefix="g")
        + _records("default", graph="single", prefix="s")
    )


def _write(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    return path


def _read(path: Path) -> list[Record]:
    return [Record.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _dump(records: list[Record]) -> list[dict]:
    return [r.model_dump() for r in records]


# --- scan_output --------------------------------------------------------------------


def test_mixed_fixture_has_ok_failed_and_errors(mixed: list[Record]) -> None:
    assert {r.status for r in mixed} == {"ok", "failed"}
    assert any(r.error is not None and r.error.raw for r in mixed)
    assert {r.graph for r in mixed} == {"aidsafe", "single"}
    assert len({r.id for r in mixed}) == len(mixed)


def test_scan_good_file(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", mixed)
    before = path.read_bytes()
    state = scan_output(path)
    assert state.done == {r.id for r in mixed if r.status == "ok"}
    assert state.failed == {r.id for r in mixed if r.status == "failed"} == {"g0", "g1", "g2"}
    assert state.lines == len(mixed)
    assert not state.repaired and state.duplicates == 0
    assert path.read_bytes() == before


def test_scan_missing_file(tmp_path: Path) -> None:
    state = scan_output(tmp_path / "nope.jsonl")
    assert state == OutputState(done=set(), failed=set(), lines=0, repaired=False, duplicates=0)
    assert not (tmp_path / "nope.jsonl").exists()


@pytest.mark.parametrize("cut", [1, 40, -2, -1])
def test_scan_repairs_truncated_last_line(tmp_path: Path, mixed: list[Record], cut: int) -> None:
    path = _write(tmp_path / "out.jsonl", mixed)
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    end = last_start + cut if cut > 0 else len(data) + cut  # -1: only the newline is lost
    path.write_bytes(data[:end])
    state = scan_output(path)
    assert state.repaired
    repaired = path.read_bytes()
    assert repaired.endswith(b"\n")
    records = _read(path)
    kept = mixed if cut == -1 else mixed[:-1]
    assert _dump(records) == _dump(kept)
    assert state.lines == len(kept)
    assert state.done | state.failed == {r.id for r in kept}
    assert scan_output(path) == OutputState(state.done, state.failed, len(kept), False, 0)


def test_scan_without_repair_leaves_torn_file(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", mixed)
    torn = path.read_bytes()[:-30]
    path.write_bytes(torn)
    state = scan_output(path, repair=False)
    assert not state.repaired and state.lines == len(mixed) - 1
    assert mixed[-1].id not in state.done | state.failed
    assert path.read_bytes() == torn


def test_scan_corrupt_middle_line_raises_with_line(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", mixed)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2][:50] + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(InputError) as info:
        scan_output(path)
    assert info.value.line == 3 and info.value.file == str(path)
    assert f"{path}:3:" in str(info.value)
    assert path.read_bytes() == before


def test_scan_json_that_is_not_a_record_raises_even_last(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", mixed[:2])
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "x", "prompt": "p"}) + "\n")
    with pytest.raises(InputError) as info:
        scan_output(path)
    assert info.value.line == 3


@pytest.mark.parametrize("text", ["precious\n", "precious"])
def test_scan_refuses_a_file_that_is_not_records(tmp_path: Path, text: str) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="--overwrite") as info:
        scan_output(path)
    assert f"{path}:1:" in str(info.value)
    assert path.read_text(encoding="utf-8") == text


def test_scan_repairs_two_writers_interleaved_last_line(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", mixed[:2])
    torn = mixed[2].model_dump_json()[:60] + mixed[3].model_dump_json() + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(torn)
    state = scan_output(path)
    assert state.repaired and state.lines == 2
    assert _dump(_read(path)) == _dump(mixed[:2])


def test_scan_removes_duplicates(tmp_path: Path, mixed: list[Record]) -> None:
    first, second = mixed[0], mixed[1]
    clash = mixed[7].model_copy(update={"id": first.id})  # a failed record reusing an ok id
    path = _write(tmp_path / "out.jsonl", [first, second, clash, first])
    state = scan_output(path)
    assert state.duplicates == 2
    assert state.lines == 2
    assert state.done == {first.id, second.id} and state.failed == set()
    assert _dump(_read(path)) == _dump([first, second])
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_scan_counts_duplicates_without_rewriting(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", [mixed[0], mixed[0]])
    before = path.read_bytes()
    state = scan_output(path, repair=False)
    assert state.duplicates == 1 and state.done == {mixed[0].id}
    assert path.read_bytes() == before


# --- rewrites -----------------------------------------------------------------------


def test_drop_records(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", mixed)
    failed = {r.id for r in mixed if r.status == "failed"}
    assert drop_records(path, failed | {"not-there"}) == len(failed)
    assert _dump(_read(path)) == _dump([r for r in mixed if r.status == "ok"])
    assert drop_records(path, failed) == 0
    assert drop_records(tmp_path / "missing.jsonl", failed) == 0
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old", encoding="utf-8")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_sidecar(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    assert sidecar_path(output) == tmp_path / "out.jsonl.summary.json"
    written = write_sidecar(output, {"ok": 3, "failed": 1, "output": output})
    assert written == sidecar_path(output)
    text = written.read_text(encoding="utf-8")
    assert json.loads(text) == {"ok": 3, "failed": 1, "output": str(output)}
    assert "\n  " in text  # indented


# --- conversion ---------------------------------------------------------------------


def test_features_cover_every_record_field() -> None:
    features = record_features()
    assert set(features) == set(Record.model_fields)
    assert {"models", "usage", "error"} <= set(JSON_FIELDS)
    assert not {"policy_set", "intents", "deliberation", "thoughts", "removed_thoughts", "faults"} & set(JSON_FIELDS)
    for name in JSON_FIELDS:
        assert features[name].dtype == "string"
    turn_usage = features["deliberation"].feature["usage"] if hasattr(features["deliberation"], "feature") else features["deliberation"][0]["usage"]
    assert set(turn_usage) == set(Usage.model_fields)


def test_convert_jsonl_is_identity(tmp_path: Path, mixed: list[Record]) -> None:
    path = _write(tmp_path / "out.jsonl", mixed)
    assert convert_output(path, "jsonl", tmp_path / "ignored") == path
    assert not (tmp_path / "ignored").exists()
    with pytest.raises(ValueError):
        convert_output(path, "csv", tmp_path / "x")


def test_parquet_round_trip(tmp_path: Path, mixed: list[Record]) -> None:
    import datasets

    # failed / no-loop records first: empty lists in the first rows must not break the schema
    ordered = sorted(mixed, key=lambda r: (r.status == "ok", r.graph == "aidsafe"))
    ordered = [_stamped(r, "c" * 64) if n % 2 else r for n, r in enumerate(ordered)]  # written_by (JSON text) or none
    path = _write(tmp_path / "out.jsonl", ordered)
    dest = convert_output(path, "parquet", tmp_path / "out.parquet")
    assert dest == tmp_path / "out.parquet" and dest.is_file()
    ds = datasets.Dataset.from_parquet(str(dest), cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == len(ordered)
    assert ds.features["usage"].dtype == "string" and ds.features["written_by"].dtype == "string"
    assert _dump(records_from_dataset(ds)) == _dump(ordered)


def test_hf_round_trip(tmp_path: Path, mixed: list[Record]) -> None:
    import datasets

    path = _write(tmp_path / "out.jsonl", mixed)
    dest = convert_output(path, "hf", tmp_path / "out_hf")
    ds = datasets.load_from_disk(str(dest))
    assert ds.num_rows == len(mixed)
    # nested structs stay structs (the first turn that added thoughts: which fake turn agrees follows a hash of its prompt)
    turn = next(t for row in ds for t in row["deliberation"] if t["thoughts"])
    assert turn["thoughts"][0]["policies"] == ["P1"]
    assert _dump(records_from_dataset(ds)) == _dump(mixed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out_hf"]  # no cache left behind


def test_convert_empty_output(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    import pyarrow.parquet as pq

    written = convert_output(path, "parquet", tmp_path / "e.parquet")
    table = pq.read_table(written)  # datasets cannot load a zero-row parquet; pyarrow can
    assert table.num_rows == 0 and set(table.column_names) == set(Record.model_fields)
    hf = convert_output(path, "hf", tmp_path / "e_hf")
    assert records_from_dataset(datasets.load_from_disk(str(hf))) == []


# --- merge --------------------------------------------------------------------------


def _shards(tmp_path: Path, mixed: list[Record]) -> list[Path]:
    return [
        _write(tmp_path / "s0.jsonl", mixed[0:4]),
        _write(tmp_path / "s1.jsonl", mixed[4:8]),
        _write(tmp_path / "s2.jsonl", mixed[8:]),
    ]


def _prompts_file(path: Path, records: list[Record], extra: tuple[str, ...] = ()) -> Path:
    """The prompts file the records were made from (their ids and prompts), plus ``extra`` ids."""
    rows = [{"id": r.id, "prompt": r.prompt} for r in records] + [{"id": i, "prompt": f"p {i}"} for i in extra]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_merge_three_shards(tmp_path: Path, mixed: list[Record]) -> None:
    shards = _shards(tmp_path, mixed)
    dest = tmp_path / "merged.jsonl"
    summary = merge_outputs(shards, dest, expected_ids=[r.id for r in mixed])
    failed = sum(r.status == "failed" for r in mixed)
    assert summary == {"records": len(mixed), "ok": len(mixed) - failed, "failed": failed, "shards": 3}
    assert _dump(_read(dest)) == _dump(mixed)


def test_merge_duplicate_across_shards_names_both_files(tmp_path: Path, mixed: list[Record]) -> None:
    shards = _shards(tmp_path, mixed)
    with shards[2].open("a", encoding="utf-8") as fh:
        fh.write(mixed[1].model_dump_json() + "\n")
    dest = tmp_path / "merged.jsonl"
    with pytest.raises(InputError) as info:
        merge_outputs(shards, dest)
    message = str(info.value)
    assert repr(mixed[1].id) in message
    assert str(shards[0]) in message and str(shards[2]) in message
    assert not dest.exists() and not (tmp_path / "merged.jsonl.tmp").exists()


def test_merge_missing_and_unexpected_ids(tmp_path: Path, mixed: list[Record]) -> None:
    shards = _shards(tmp_path, mixed)
    dest = tmp_path / "merged.jsonl"
    wanted = [r.id for r in mixed] + [f"extra{i}" for i in range(12)]
    with pytest.raises(InputError, match=r"12 input id\(s\) missing") as info:
        merge_outputs(shards, dest, expected_ids=wanted)
    assert "'extra9'" in str(info.value) and "'extra10'" not in str(info.value) and "2 more" in str(info.value)
    with pytest.raises(InputError, match="not in the input"):
        merge_outputs(shards, dest, expected_ids=[r.id for r in mixed[1:]])
    assert not dest.exists()


def test_merge_refuses_torn_shard(tmp_path: Path, mixed: list[Record]) -> None:
    shards = _shards(tmp_path, mixed)
    shards[1].write_bytes(shards[1].read_bytes()[:-20])
    with pytest.raises(InputError, match="truncated") as info:
        merge_outputs(shards, tmp_path / "merged.jsonl")
    assert info.value.file == str(shards[1]) and info.value.line == 4


def test_cli_merge(tmp_path: Path, mixed: list[Record], capsys: pytest.CaptureFixture[str]) -> None:
    shards = [str(p) for p in _shards(tmp_path, mixed)]
    prompts = _prompts_file(tmp_path / "prompts.jsonl", mixed)
    dest = tmp_path / "merged.jsonl"
    assert main(["merge", *shards, "-o", str(dest), "--input", str(prompts)]) == 0
    assert _dump(_read(dest)) == _dump(mixed)
    assert f"{len(mixed)} records" in capsys.readouterr().err


def test_cli_merge_errors(tmp_path: Path, mixed: list[Record], capsys: pytest.CaptureFixture[str]) -> None:
    shards = [str(p) for p in _shards(tmp_path, mixed)]
    prompts = _prompts_file(tmp_path / "prompts.jsonl", mixed, extra=("lost",))
    dest = tmp_path / "merged.jsonl"
    assert main(["merge", *shards, "-o", str(dest), "--input", str(prompts)]) == 2
    assert "'lost'" in capsys.readouterr().err
    assert main(["merge", shards[0], shards[0], "-o", str(dest)]) == 2
    assert "shard given twice" in capsys.readouterr().err
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(Path(shards[0]).read_bytes())
    assert main(["merge", shards[0], str(copy), "-o", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "duplicate id" in err and shards[0] in err and str(copy) in err
    assert not dest.exists()


def test_cli_merge_output_from_env(tmp_path: Path, mixed: list[Record], monkeypatch: pytest.MonkeyPatch) -> None:
    shards = [str(p) for p in _shards(tmp_path, mixed)]
    dest = tmp_path / "env.jsonl"
    monkeypatch.setenv("AIDSAFE_MERGE_OUTPUT", str(dest))
    assert main(["merge", *shards]) == 0
    assert len(_read(dest)) == len(mixed)


# --- block files (an output written by workers elsewhere, e.g. --engine ray) ---------------------


def _block_records(behaviour: str, ids: list[str]) -> list[Record]:
    from aidsafe.inputs import PromptItem

    pipe = Pipeline("single", "aidsafe5", ModelSettings(backend="fake", model=behaviour))
    return pipe.run([PromptItem(id=i, prompt=f"prompt {i}", source="-", line=1) for i in ids])


def test_block_merge_keeps_each_id_once_ok_first_else_the_latest(tmp_path: Path) -> None:
    ok = {r.id: r for r in _block_records("default", ["a", "b", "c"])}
    failed = {r.id: r for r in _block_records("garbage", ["a", "b", "d"])}
    assert failed["b"].status == "failed" and ok["b"].status == "ok"
    out = tmp_path / "out.jsonl"
    parts = blocks_dir(out)
    parts.mkdir()
    _write(out, [ok["a"], failed["b"]])
    _write(parts / "r0001-aa.jsonl", [ok["b"], ok["c"]])
    _write(parts / "r0001-bb.jsonl", [ok["c"]])  # a batch written twice (its first attempt's actor died after the rename)
    _write(parts / "r0002-aa.jsonl", [failed["a"], failed["d"]])  # a rerun of a that failed this time: the ok record stays
    (parts / ".r0003-cc.jsonl.123.tmp").write_text("{\"id\": \"torn", encoding="utf-8")  # a killed writer's temporary file
    state = scan_blocks(parts, model=Record, what="an aidsafe record")
    assert state.done == {"b", "c"} and state.failed == {"a", "d"} and state.last_run == 2 and len(state.files) == 3
    merged = merge_blocks(out, parts, model=Record)
    assert merged.ids == {"a", "b", "c", "d"} and merged.parts == 3 and merged.duplicates == 3
    got = {r.id: r for r in read_records(out, Record)}
    assert len(list(read_records(out, Record))) == 4
    assert got["a"].status == "ok" and got["b"].status == "ok" and got["c"].status == "ok" and got["d"].status == "failed"
    assert not parts.exists()


# --- written_by: each record names the configuration that wrote it ---------------------------


def _stamped(record: Record, config: str) -> Record:
    return Stamp(job="generate", config=config).apply(record, None)


def test_scan_reports_the_records_configuration_and_refuses_a_second_one(tmp_path: Path, mixed: list[Record]) -> None:
    first, second = "a" * 64, "b" * 64
    path = _write(tmp_path / "out.jsonl", [mixed[0], *(_stamped(r, first) for r in mixed[1:4])])  # an older record first
    state = scan_output(path)
    assert (state.config, state.config_line, state.format) == (first, 2, 1)
    assert scan_output(_write(tmp_path / "old.jsonl", mixed[:3])).config is None  # records written before it
    _write(path, [*(_stamped(r, first) for r in mixed[:3]), mixed[3], _stamped(mixed[4], second), _stamped(mixed[5], first)])
    before = path.read_bytes()
    with pytest.raises(InputError, match=rf"written with configuration sha256 {second}, but {path}:1 with {first}") as info:
        scan_output(path)
    assert info.value.file == str(path) and info.value.line == 5 and path.read_bytes() == before
    seen: list[OutputState] = []
    assert scan_output(_write(tmp_path / "b.jsonl", [_stamped(mixed[0], first)]), check=seen.append) is seen[0]
    parts = tmp_path / "parts"
    parts.mkdir()
    _write(parts / "r0001-aa.jsonl", [_stamped(mixed[0], first)])
    _write(parts / "r0001-bb.jsonl", [mixed[1], _stamped(mixed[2], second)])
    blocks = scan_blocks(parts, model=Record, what="an aidsafe record")
    assert blocks.configs == {first: (parts / "r0001-aa.jsonl", 1), second: (parts / "r0001-bb.jsonl", 2)} and blocks.format == 1


def test_merge_refuses_shards_of_two_configurations(tmp_path: Path, mixed: list[Record], capsys: pytest.CaptureFixture[str]) -> None:
    first, second = "a" * 64, "b" * 64
    shards = [
        _write(tmp_path / "s0.jsonl", [_stamped(r, first) for r in mixed[0:4]]),
        _write(tmp_path / "s1.jsonl", mixed[4:8]),  # written before records carried it: goes with any
        _write(tmp_path / "s2.jsonl", [_stamped(r, first) for r in mixed[8:]]),
    ]
    dest = tmp_path / "merged.jsonl"
    assert merge_outputs(shards, dest)["records"] == len(mixed)
    assert {r.written_by.config for r in read_records(dest, Record) if r.written_by} == {first}
    dest.unlink()
    _write(shards[2], [mixed[8], *(_stamped(r, second) for r in mixed[9:])])
    with pytest.raises(InputError, match=rf"configuration sha256 {second}, but {shards[0]}:1 with {first}") as info:
        merge_outputs(shards, dest)
    assert info.value.file == str(shards[2]) and info.value.line == 2 and not dest.exists()
    assert main(["merge", *map(str, shards), "-o", str(dest)]) == 2
    err = capsys.readouterr().err
    assert f"{shards[2]}:2: written with configuration sha256 {second}" in err and "merge the shards of one configuration" in err
    assert not dest.exists()


def test_merge_checks_older_shards_by_their_sidecars(tmp_path: Path, mixed: list[Record]) -> None:
    shards = _shards(tmp_path, mixed)  # records without written_by
    config = {"job": "generate", "graph": {"name": "aidsafe"}}
    for shard in shards:
        write_sidecar(shard, {"complete": True, "config": config})
    dest = tmp_path / "merged.jsonl"
    assert merge_outputs(shards, dest)["shards"] == 3
    write_sidecar(shards[1], {"complete": True, "config": {**config, "graph": {"name": "single"}}})
    with pytest.raises(InputError, match=r"\(its summary sidecar\), but .*s0.jsonl \(its summary sidecar\) with") as info:
        merge_outputs(shards, dest)
    assert info.value.file == str(shards[1]) and info.value.line is None
