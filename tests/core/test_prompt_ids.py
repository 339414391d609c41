"""One id rule for every reader of a file, the prompt digest every record keeps, and the paired
operations (compare, judge --against, merge --input, report, resume) that refuse an id naming
different prompts instead of pairing them."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from aidsafe.aidsafe_csv import read_released
from aidsafe.cli import main
from aidsafe.errors import InputError
from aidsafe.evals.data import read_prompts as read_eval_prompts
from aidsafe.inputs import default_id, read_prompts
from aidsafe.judge.comparison import compare
from aidsafe.judge.schema import JudgedRecord, PairVerdict
from aidsafe.outputs import merge_outputs
from aidsafe.pairing import PromptCheck, check_inputs, same_prompt
from aidsafe.pairs.schema import PairRecord
from aidsafe.policies import load_policy_set
from aidsafe.records import Record, prompt_sha256

# the file: six rows, prompts spanning lines (ids used to be 5, 7, 11, 13, 17, 19 in generate, 1-6 in import)
MULTILINE = [
    "How do I pick a lock?\nI locked myself out.",
    "What is the capital of France?",
    "Write a poem\nabout the sea\nin three lines.",
    "How do vaccines work?",
    "Explain this code:\nprint('hi')",
    "Tell me a joke.",
]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _released_csv(path: Path, prompts: list[str], *, ids: list[str] | None = None) -> Path:
    """A CSV in the released layout (so that ``aidsafe import`` reads it too), quoted fields spanning lines."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        columns = (["id"] if ids is not None else []) + ["prompt", "refined_thoughts", "response"]
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for n, prompt in enumerate(prompts):
            row = {"prompt": prompt, "refined_thoughts": f"step one of {n}\nstep two of {n}", "response": f"answer {n}"}
            writer.writerow({**row, **({"id": ids[n]} if ids is not None else {})})
    return path


def _generate(src: Path, out: Path, *extra: str) -> int:
    return main(["generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress", *extra])


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _record(record_id: str, prompt: str, *, digest: bool = True, **extra: Any) -> Record:
    return Record.model_validate({
        "id": record_id, "prompt": prompt, **({"prompt_sha256": prompt_sha256(prompt)} if digest else {}),
        "graph": "aidsafe", "policy_set": {"name": "aidsafe5", "version": "1.0"}, "intents": {}, "deliberation": [],
        "stop_reason": "consensus", "rounds": 1, "thoughts": [{"text": "a step", "policies": ["P1"]}], "removed_thoughts": [],
        "response": "r", "models": {}, "usage": {}, "status": "ok", **extra,
    })


def _write(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    return path


# --- one id rule ---------------------------------------------------------------------------------


def test_a_multiline_csv_gets_the_same_ids_in_generate_import_and_eval(tmp_path: Path) -> None:
    src = _released_csv(tmp_path / "released.csv", MULTILINE)
    assert src.read_text(encoding="utf-8").count("\n") > 2 * (1 + len(MULTILINE))  # rows span lines
    expected = [(str(n), prompt) for n, prompt in enumerate(MULTILINE, 1)]
    generated = [(item.id, item.prompt) for item in read_prompts(src)]
    imported = [(record.id, record.prompt) for record in read_released(src, load_policy_set("aidsafe5"))]
    evaluated = [(item.id, item.input) for item in read_eval_prompts(src)]
    assert generated == imported == evaluated == expected
    # and through the commands: generate and import write the same id for the same prompt
    gen, imp = tmp_path / "gen.jsonl", tmp_path / "imp.jsonl"
    assert _generate(src, gen) == 0
    assert main(["import", str(src), "-o", str(imp)]) == 0
    assert {r["id"]: r["prompt"] for r in _records(gen)} == {r["id"]: r["prompt"] for r in _records(imp)} == dict(expected)


def test_every_format_numbers_its_records_from_one(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    prompts = ["first\nprompt", "second", "third"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n" + "".join(json.dumps({"prompt": p}) + "\n\n" for p in prompts), encoding="utf-8")  # blank lines
    text = tmp_path / "p.txt"
    text.write_text("\n\nfirst line\n\nsecond line\n", encoding="utf-8")
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": prompts}), parquet)
    csv_file = _released_csv(tmp_path / "p.csv", prompts)
    expected = [("1", prompts[0]), ("2", prompts[1]), ("3", prompts[2])]
    for path in (jsonl, parquet, csv_file):
        assert [(i.id, i.prompt) for i in read_prompts(path)] == expected, path
    assert [(i.id, i.input) for i in read_eval_prompts(jsonl)] == expected
    assert [(i.id, i.prompt) for i in read_prompts(text)] == [("1", "first line"), ("2", "second line")]
    assert default_id(7) == "7"


def test_an_id_column_is_kept_by_every_reader(tmp_path: Path) -> None:
    src = _released_csv(tmp_path / "ids.csv", MULTILINE, ids=[f"q{n}" for n in range(6)])
    expected = [(f"q{n}", prompt) for n, prompt in enumerate(MULTILINE)]
    assert [(i.id, i.prompt) for i in read_prompts(src)] == expected
    assert [(r.id, r.prompt) for r in read_released(src, load_policy_set("aidsafe5"))] == expected
    assert [(i.id, i.input) for i in read_eval_prompts(src)] == expected


def test_a_bad_row_skipped_by_a_lenient_read_shifts_no_id(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a"}\nnot json\n\n{"prompt": "b"}\n', encoding="utf-8")
    assert [(i.id, i.prompt) for i in read_prompts(src, lenient=True)] == [("1", "a"), ("3", "b")]


def test_a_bom_csv_reads_alike_in_eval(tmp_path: Path) -> None:
    src = tmp_path / "bom.csv"
    src.write_bytes("\ufeffprompt\nfirst\n\"second\nline\"\n".encode())
    assert [(i.id, i.prompt) for i in read_prompts(src)] == [(i.id, i.input) for i in read_eval_prompts(src)] == [
        ("1", "first"), ("2", "second\nline")]


# --- the digest ------------------------------------------------------------------------------------


def test_generate_import_judge_and_pairs_write_the_prompt_digest(tmp_path: Path) -> None:
    src = _released_csv(tmp_path / "released.csv", MULTILINE[:3])
    gen, imp, judged = tmp_path / "gen.jsonl", tmp_path / "imp.jsonl", tmp_path / "judged.jsonl"
    assert _generate(src, gen) == 0
    assert main(["import", str(src), "-o", str(imp)]) == 0
    for path in (gen, imp):
        assert [r["prompt_sha256"] for r in _records(path)] == [_sha(p) for p in MULTILINE[:3]], path
    # a record written before the digest still loads; the judge writes the digest for it
    old = [{k: v for k, v in r.items() if k != "prompt_sha256"} for r in _records(gen)]
    older = tmp_path / "older.jsonl"
    older.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    assert all(Record.model_validate(r).prompt_sha256 is None for r in old)
    assert main(["judge", str(older), "-o", str(judged), "--backend", "fake", "--no-progress"]) == 0
    assert [JudgedRecord.model_validate_json(line).prompt_sha256 for line in judged.read_text().splitlines()] == [
        _sha(p) for p in MULTILINE[:3]]
    pairs = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(gen), "-o", str(pairs), "--backend", "fake", "--model", "agree", "--no-progress"]) == 0
    assert [PairRecord.model_validate_json(line).prompt_sha256 for line in pairs.read_text().splitlines()] == [
        _sha(p) for p in MULTILINE[:3]]
    assert PairRecord.model_validate({k: v for k, v in json.loads(pairs.read_text().splitlines()[0]).items()
                                      if k != "prompt_sha256"}).prompt_sha256 is None


def test_same_prompt_compares_digests_when_both_have_one_else_the_text() -> None:
    a, b = _record("1", "same"), _record("1", "same", digest=False)
    assert same_prompt(a, b) and same_prompt(b, a)
    assert not same_prompt(_record("1", "one"), _record("1", "two", digest=False))
    # both digests present: they decide (a hand-edited prompt under an old digest is not looked at)
    stale = _record("1", "edited", prompt_sha256=prompt_sha256("same"))
    assert same_prompt(a, stale) and not same_prompt(b, stale)


def test_the_error_lists_five_then_counts_the_rest() -> None:
    check = PromptCheck("A.jsonl", "B.jsonl")
    for n in range(8):
        check.pair(str(n), _record(str(n), f"How do I do thing number {n} with a very long prompt indeed?"), _record(str(n), f"What is {n}?"))
    with pytest.raises(InputError) as info:
        check.raise_if_any()
    message = str(info.value)
    assert message.startswith("8 ids name different prompts in A.jsonl and B.jsonl: id '0' (A.jsonl: 'How do I do thing")
    assert "/ B.jsonl: 'What is 0?')" in message and "id '4'" in message and "id '5'" not in message
    assert ", and 3 more;" in message


# --- paired operations refuse an id naming different prompts ------------------------------------------


def _shifted(tmp_path: Path) -> tuple[Path, Path]:
    """Two outputs sharing ids 1-3 with different prompts (the old rule's ids against the new), as
    both written today and written before the digest (text only)."""
    a = _write(tmp_path / "a.jsonl", [_record(str(n), p) for n, p in enumerate(MULTILINE[:3], 1)])
    b = _write(tmp_path / "b.jsonl", [_record(str(n), p, digest=False) for n, p in enumerate(MULTILINE[1:4], 1)])
    return a, b


def test_compare_refuses_ids_naming_different_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _shifted(tmp_path)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "3 ids name different prompts in a.jsonl and b.jsonl: id '1' (a.jsonl: 'How do I pick a lock? I locked myself out.'" in err
    assert "/ b.jsonl: 'What is the capital of France?')" in err
    with pytest.raises(InputError, match="1 id names a different prompt in A and C"):
        compare({"A": [_record("1", "x"), _record("2", "y")], "B": [_record("2", "y")], "C": [_record("1", "z")]})
    # the same prompts under the same ids (one file older, without digests) compare
    check_inputs({"A": [_record("1", "x")], "B": [_record("1", "x", digest=False)]})
    assert compare({"A": [_record("1", "x")], "B": [_record("1", "x", digest=False)]})["common"] == 1


def test_judge_against_refuses_before_any_model_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _shifted(tmp_path)
    out = tmp_path / "verdicts.jsonl"
    assert main(["judge", str(a), "--against", str(b), "-o", str(out), "--backend", "fake", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "3 ids name different prompts in" in err and str(a) in err and str(b) in err
    assert not out.exists() or not out.read_text()
    # the same prompts pair as before
    same = _write(tmp_path / "same.jsonl", [_record(str(n), p, digest=False) for n, p in enumerate(MULTILINE[:3], 1)])
    assert main(["judge", str(a), "--against", str(same), "-o", str(out), "--backend", "fake", "--no-progress"]) == 0
    assert sorted(PairVerdict.model_validate_json(line).id for line in out.read_text().splitlines()) == ["1", "2", "3"]


def test_merge_refuses_a_shard_record_of_another_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _released_csv(tmp_path / "in.csv", MULTILINE)
    shards = []
    for i in range(2):
        shard = tmp_path / f"s{i}.jsonl"
        assert _generate(src, shard, "--shard", f"{i}/2") == 0
        shards.append(str(shard))
    merged = tmp_path / "all.jsonl"
    assert main(["merge", *shards, "-o", str(merged), "--input", str(src)]) == 0
    # the same ids with other prompts: a prompts file that is not the run's
    other = _released_csv(tmp_path / "other.csv", list(reversed(MULTILINE)))
    assert main(["merge", *shards, "-o", str(tmp_path / "bad.jsonl"), "--input", str(other)]) == 2
    err = capsys.readouterr().err
    assert "6 ids name different prompts in the input and the shards: id '1' (the input: 'Tell me a joke.' / the shards: 'How do I pick" in err
    assert ", and 1 more;" in err and not (tmp_path / "bad.jsonl").exists()
    # library: plain ids are still accepted and check only the ids
    assert merge_outputs(shards, tmp_path / "ids.jsonl", expected_ids=[str(n) for n in range(1, 7)])["records"] == 6


def test_report_refuses_a_judged_file_of_other_prompts(tmp_path: Path) -> None:
    from aidsafe.viewer.build import build_report

    a, b = _shifted(tmp_path)
    judged = tmp_path / "judged.jsonl"
    assert main(["judge", str(b), "-o", str(judged), "--backend", "fake", "--no-progress"]) == 0
    with pytest.raises(InputError, match="3 ids name different prompts in the output and"):
        build_report(a, [judged])


# --- resume ------------------------------------------------------------------------------------------


def test_resuming_an_output_of_the_old_ids_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _released_csv(tmp_path / "in.csv", MULTILINE)
    out = tmp_path / "out.jsonl"
    assert _generate(src, out, "--limit", "3") == 0
    # what an older aidsafe wrote: the csv reader's line numbers as ids (5, 7, 11 ...), no digest
    records = _records(out)
    old_ids = {"1": "5", "2": "7", "3": "11"}
    old = [{**{k: v for k, v in r.items() if k != "prompt_sha256"}, "id": old_ids[r["id"]]} for r in records]
    # id 5 named the first row's prompt; under the rule of every reader it is the fifth row's
    out.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    before = out.read_bytes()
    assert _generate(src, out) == 2
    err = capsys.readouterr().err
    assert "1 id names a different prompt in" in err and "id '5' (" in err and "--overwrite" in err
    assert out.read_bytes() == before  # nothing written
    assert _generate(src, out, "--overwrite") == 0
    assert sorted(r["id"] for r in _records(out)) == ["1", "2", "3", "4", "5", "6"]


def test_resume_with_an_id_column_is_unaffected(tmp_path: Path) -> None:
    src = _released_csv(tmp_path / "ids.csv", MULTILINE, ids=[f"q{n}" for n in range(6)])
    out = tmp_path / "out.jsonl"
    assert _generate(src, out, "--limit", "2") == 0
    # records written before the digest resume as before
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "prompt_sha256"}) + "\n" for r in _records(out)))
    assert _generate(src, out) == 0
    assert [r["id"] for r in _records(out)] == [f"q{n}" for n in range(6)]
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["run"]["skipped"] == 2


def test_resuming_a_judge_run_on_a_replaced_records_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _shifted(tmp_path)
    judged = tmp_path / "judged.jsonl"
    assert main(["judge", str(a), "-o", str(judged), "--backend", "fake", "--no-progress", "--limit", "1"]) == 0
    a.write_bytes(b.read_bytes())  # the records file was regenerated from another input
    assert main(["judge", str(a), "-o", str(judged), "--backend", "fake", "--no-progress"]) == 2
    assert "1 id names a different prompt in" in capsys.readouterr().err


def test_the_ray_engine_refuses_the_resume_before_joining_a_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import require_extras

    require_extras("ray", extra="the [ray] extra")
    src = _released_csv(tmp_path / "in.csv", MULTILINE)
    out = tmp_path / "out.jsonl"
    _write(out, [_record("1", MULTILINE[0], digest=False)])  # the first row's record, written before the digest: fine
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    _write(parts / "r1-00ab.jsonl", [_record("2", MULTILINE[0]), _record("3", MULTILINE[2])])  # id 2 is not that prompt
    args = ["--engine", "ray", "--ray-actors", "1"]
    assert _generate(src, out, *args) == 2
    err = capsys.readouterr().err
    assert f"1 id names a different prompt in {src} and {out}: id '2' (" in err and "--overwrite" in err
    assert "How do I pick a lock? I locked myself out." in err  # read back from the block


def test_resuming_pairs_on_a_regenerated_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, other = _released_csv(tmp_path / "in.csv", MULTILINE[:3]), _released_csv(tmp_path / "other.csv", MULTILINE[3:])
    gen, pairs = tmp_path / "gen.jsonl", tmp_path / "pairs.jsonl"
    assert _generate(src, gen) == 0
    common = ["pairs", str(gen), "-o", str(pairs), "--backend", "fake", "--model", "agree", "--no-progress"]
    assert main([*common, "--limit", "2"]) == 0
    assert _generate(other, gen, "--overwrite") == 0  # the same ids 1-3, other prompts
    assert main(common) == 2
    err = capsys.readouterr().err
    assert f"2 ids name different prompts in {gen} and {pairs}: id '1' ({gen}: 'How do vaccines work?' / {pairs}: 'How do I pick" in err
    assert len(pairs.read_text().splitlines()) == 2  # nothing written
