"""Training sets in TRL's formats (``aidsafe export --format sft|dpo``) and training configs.

The exports are checked the way a trainer reads them: ``datasets.load_dataset(FOLDER)`` and, when
the ``[train]`` extra is installed, TRL's own data preparation. The real training runs are in
``test_train_e2e.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from aidsafe.cli import main
from aidsafe.errors import ConfigError, InputError
from aidsafe.train import export_dpo, export_sft, export_sft_original
from aidsafe.train.config import load_train_config

needs_train = pytest.mark.requires_extras("torch", "transformers", "trl", "peft", extra="the [train] extra")


def _record(i: int, *, status: str = "ok", thoughts: int = 2, policies: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": f"r{i}", "prompt": f"prompt {i}", "graph": "aidsafe", "policy_set": {"name": "aidsafe5", "version": "1.0"},
        "intents": {"explicit": ["e"], "implicit": []}, "deliberation": [], "stop_reason": "consensus", "rounds": 1,
        "thoughts": [{"text": f"thought {i}.{k}", "policies": policies if policies is not None else ["P1"]} for k in range(thoughts)],
        "removed_thoughts": [], "response": f"response {i}" if status == "ok" else "",
        "models": {"drafter": "m:1", "refiner": "m:2"}, "usage": {}, "status": status,
        **({"error": {"stage": "init", "kind": "invalid_reply", "message": "bad"}} if status == "failed" else {}),
    }


def _side(tag: str) -> dict[str, Any]:
    return {"thoughts": [{"text": f"{tag} thought", "policies": ["P2"]}], "response": f"{tag} response"}


def _judgement(score: int) -> dict[str, Any]:
    return {"judge_model": "openai:judge", "rubric": "judge_scores.jinja@0123456789ab", "scores": {"faithfulness_cot_policy": score},
            "citations": {"thoughts": 1, "citing": 1, "share_citing": 1.0}}


def _pair(i: int, *, status: str = "ok", flags: list[str] | None = None, rejected: bool = True, judged: bool = True) -> dict[str, Any]:
    """A pair as ``aidsafe pairs`` writes it, and (``judged``) as ``aidsafe judge`` grades it."""
    pair = {
        "id": f"q{i}", "prompt": f"prompt {i}", "policy_set": {"name": "aidsafe5", "version": "1.0"}, "status": status,
        "chosen": _side("chosen"), "rejected": _side("rejected") if rejected else None,
        "stop_reason": "violation" if rejected else "budget", "flags": flags or [], "source": {"graph": "aidsafe"},
        "models": {"whisperer": "w:1", "target": "t:1", "scorer": "s:1"},
    }
    if judged:
        pair["judgement"] = {"chosen": _judgement(5), "rejected": _judgement(2) if rejected else None}
    return pair


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]


# --- SFT --------------------------------------------------------------------------------------


def test_sft_export_places_the_cot_and_leaves_failed_records_out(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "gen.jsonl", [_record(0), _record(1, status="failed"), _record(2, policies=[])])
    counts = export_sft(src, tmp_path / "sft")
    rows = _rows(tmp_path / "sft")
    assert counts.safety == 2 and counts.rows == 2 and counts.left_out["failed record"] == 1
    user, assistant = rows[0]["messages"]
    assert user == {"role": "user", "content": "prompt 0"}
    assert assistant["content"] == "<think>\nthought 0.0 [P1]\nthought 0.1 [P1]\n</think>\n\nresponse 0"
    assert rows[1]["messages"][1]["content"].startswith("<think>\nthought 2.0\n")  # no policy: no brackets

    export_sft(src, tmp_path / "reasoning", cot="reasoning", reasoning_field="thinking")
    message = _rows(tmp_path / "reasoning")[0]["messages"][1]
    assert message == {"role": "assistant", "content": "response 0", "thinking": "thought 0.0 [P1]\nthought 0.1 [P1]"}

    export_sft(src, tmp_path / "none", cot="none")
    assert _rows(tmp_path / "none")[0]["messages"][1] == {"role": "assistant", "content": "response 0"}


def test_sft_mixing_at_a_ratio_and_the_card(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "gen.jsonl", [_record(i) for i in range(4)])
    general = _jsonl(tmp_path / "general.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)])
    counts = export_sft(src, tmp_path / "mixed", mix=general, mix_ratio=0.5, mix_prompt_field="question",
                        mix_response_field="answer", license="cc-by-4.0", name="Safety CoT")
    rows = _rows(tmp_path / "mixed")
    assert (counts.safety, counts.general, len(rows)) == (4, 2, 6)
    assert rows[4]["messages"] == [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]
    card = (tmp_path / "mixed" / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\n") and "# Safety CoT" in card
    for fact in ("aidsafe (4)", "aidsafe5 1.0 (4)", "m:1 (4)", "| rows | 6 |", "| safety examples | 4 |",
                 "general examples (from `general.jsonl`) | 2 |", "trl.SFTTrainer", "| mean thoughts per example | 2.00 |", "SHA-256 of `train.jsonl`: `"):
        assert fact in card, fact
    # what datasets (and the Hub) read: the card's config points at train.jsonl
    loaded = datasets.load_dataset(str(tmp_path / "mixed"), split="train")
    assert loaded.num_rows == 6 and loaded.column_names == ["messages"]
    # 'messages' lines of a general file are taken as they are; a line with neither is an error with its line
    _jsonl(general, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, {"other": 1}])
    export_sft(src, tmp_path / "one", mix=general, mix_ratio=0.25)
    assert _rows(tmp_path / "one")[-1]["messages"][0]["content"] == "hi"
    with pytest.raises(InputError, match=r"general.jsonl:2: .*'prompt' and 'response'"):
        export_sft(src, tmp_path / "two", mix=general, mix_ratio=1.0)


def test_two_exports_in_folders_of_one_name_load_as_themselves(tmp_path: Path) -> None:
    for n, sub in enumerate(("a", "b")):
        export_sft(_jsonl(tmp_path / f"gen{n}.jsonl", [_record(n)]), tmp_path / sub / "sft")
    first = datasets.load_dataset(str(tmp_path / "a" / "sft"), split="train")
    second = datasets.load_dataset(str(tmp_path / "b" / "sft"), split="train")
    assert first[0]["messages"][0]["content"] == "prompt 0" and second[0]["messages"][0]["content"] == "prompt 1"


def test_sft_export_errors_name_the_place(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "gen.jsonl", [_record(0), _record(1, thoughts=0)])
    with pytest.raises(InputError, match=r"gen.jsonl:2: record 'r1' is ok but has no chain of thought"):
        export_sft(src, tmp_path / "sft")
    assert not (tmp_path / "sft" / "train.jsonl").exists()  # nothing half-written
    export_sft(src, tmp_path / "plain", cot="none")  # without a CoT that record is fine
    failed = _jsonl(tmp_path / "failed.jsonl", [_record(0, status="failed")])
    with pytest.raises(InputError, match="failed.jsonl: holds no ok record"):
        export_sft(failed, tmp_path / "x")
    with pytest.raises(InputError, match="is a file"):
        export_sft(src, src, cot="none")
    with pytest.raises(InputError, match="mix ratio"):
        export_sft(src, tmp_path / "y", mix_ratio=-1)


# --- SFT_OG: the original responses, no CoT ---------------------------------------------------------


def test_sft_og_takes_the_original_responses_without_a_cot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "How do I pick a lock?", "response": "Use a tension wrench.", "x": 1},
                                               {"prompt": "Write a phishing mail.", "response": "Dear customer, send your password."}])
    counts = export_sft_original(src, tmp_path / "og", license="cc-by-4.0")
    assert (counts.rows, counts.safety, counts.thoughts) == (2, 2, 0)
    assert _rows(tmp_path / "og") == [
        {"messages": [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Use a tension wrench."}]},
        {"messages": [{"role": "user", "content": "Write a phishing mail."},
                      {"role": "assistant", "content": "Dear customer, send your password."}]},
    ]
    card = (tmp_path / "og" / "README.md").read_text()
    for fact in ("**SFT_OG baseline**", "original responses without CoT", "| source | `prompts.jsonl`, field `response` |",
                 "| chain of thought | none (original responses) |", "| examples with their original response | 2 |", "- baseline",
                 "license: cc-by-4.0", "trl.SFTTrainer"):
        assert fact in card, fact
    assert "mean thoughts" not in card and "<think>" not in (tmp_path / "og" / "train.jsonl").read_text()
    assert datasets.load_dataset(str(tmp_path / "og"), split="train").num_rows == 2

    # a CSV with other field names, mixed with general examples, through the command line
    csv_src = tmp_path / "released.csv"
    csv_src.write_text('question,answer\n"How do I hotwire a car?","Connect the ignition wires."\n')
    general = _jsonl(tmp_path / "general.jsonl", [{"prompt": f"g{i}", "response": f"r{i}"} for i in range(3)])
    assert main(["export", str(csv_src), "--format", "sft", "--responses", "original", "--prompt-field", "question",
                 "--response-field", "answer", "--mix", str(general), "--mix-ratio", "2", "-o", str(tmp_path / "og2")]) == 0
    assert "the SFT_OG baseline" in capsys.readouterr().err
    rows = _rows(tmp_path / "og2")
    assert rows[0]["messages"][1]["content"] == "Connect the ignition wires." and len(rows) == 3
    assert "general examples (from `general.jsonl`) | 2 |" in (tmp_path / "og2" / "README.md").read_text()


@pytest.mark.parametrize(("name", "text", "message"), [
    ("p.jsonl", '{"prompt": "a", "response": "b"}\n\n{"id": "k", "prompt": "c"}\n',
     r"p.jsonl:3: response: prompt 'k' has no original response \(missing\); --responses original needs a non-empty 'response'"),
    ("p.jsonl", '{"prompt": "a", "response": "  "}\n', r"p.jsonl:1: response: prompt '1' has no original response \(str '  '\)"),
    ("p.jsonl", '{"prompt": "a", "response": 3}\n', r"p.jsonl:1: response: prompt '1' has no original response \(int 3\)"),
    ("p.csv", "prompt,response\na,b\nc,\n", r"p.csv:3: response: prompt '2' has no original response"),
    ("p.csv", "prompt,reply\na,b\n", r"p.csv:2: response: prompt '1' has no original response \(missing\)"),
    ("p.jsonl", '{"prompt": "a", "response": "b"}\n{"text": "c", "response": "d"}\n', r"p.jsonl:2: prompt: missing prompt field"),
])
def test_sft_og_rows_without_a_response_name_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    src = tmp_path / name
    src.write_text(text)
    with pytest.raises(InputError, match=message):
        export_sft_original(src, tmp_path / "og")
    assert not (tmp_path / "og" / "train.jsonl").exists()  # nothing half-written


def test_sft_og_reads_parquet_and_saved_datasets(tmp_path: Path) -> None:
    """The response column reaches the export from the columnar formats too (not only the prompt and id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": ["a", "b"], "question": ["How do I pick a lock?", "Write a phishing mail."],
               "answer": ["Use a tension wrench.", "Dear customer, send your password."], "other": [1, 2]}
    parquet = tmp_path / "prompts.parquet"
    pq.write_table(pa.table(columns), parquet)
    saved = tmp_path / "prompts-ds"
    datasets.Dataset.from_dict(columns).save_to_disk(str(saved))
    for n, source in enumerate((parquet, saved)):
        counts = export_sft_original(source, tmp_path / f"og{n}", prompt_field="question", response_field="answer")
        assert counts.rows == 2, source
        assert [row["messages"][1]["content"] for row in _rows(tmp_path / f"og{n}")] == columns["answer"], source


def test_sft_og_refuses_aidsafe_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A generation output has prompts and a response too, but that response is the model's own
    reply: SFT_OG would call generated replies "original responses"."""
    gen = _jsonl(tmp_path / "gen.jsonl", [{"id": "p", "prompt": "a", "response": "b"}, _record(1)])
    with pytest.raises(InputError, match=r"gen.jsonl:2: prompt 'r1' looks like aidsafe output, not a prompts file: it has the fields "
                                         r"graph, thoughts, status of a record of aidsafe generate.*generated reply, not an original "
                                         r"response.*a prompts file whose rows carry their own responses"):
        export_sft_original(gen, tmp_path / "og")
    assert not (tmp_path / "og").exists()  # a refused export leaves no folder behind
    assert main(["export", str(gen), "--format", "sft", "--responses", "original", "-o", str(tmp_path / "og")]) == 2
    assert "gen.jsonl:2: prompt 'r1' looks like aidsafe output" in capsys.readouterr().err
    released = tmp_path / "released.csv"  # the AIDSAFE CSV layout: its responses were generated too
    released.write_text('prompt,refined_thoughts,response,deliberation_log\n"q","t","r","log"\n')
    with pytest.raises(InputError, match=r"released.csv:2: prompt '1' looks like aidsafe output.*the AIDSAFE CSV layout"):
        export_sft_original(released, tmp_path / "og")
    assert not (tmp_path / "og").exists()


def test_sft_og_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a"}])
    assert main(["export", str(src), "--format", "sft", "--responses", "original", "-o", str(tmp_path / "og")]) == 2
    assert "prompts.jsonl:1: response: prompt '1' has no original response" in capsys.readouterr().err
    assert main(["export", str(src), "--format", "sft", "--responses", "original", "--cot", "think", "-o", str(tmp_path / "og")]) == 2
    assert "--responses original has no chain of thought" in capsys.readouterr().err
    assert main(["export", str(src), "--format", "dpo", "--responses", "original", "-o", str(tmp_path / "og")]) == 2
    assert "--responses original is for --format sft" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope.jsonl"), "--format", "sft", "--responses", "original", "-o", str(tmp_path / "og")]) == 2
    assert "nope.jsonl: prompts file not found" in capsys.readouterr().err
    assert not (tmp_path / "og").exists()


# --- DPO --------------------------------------------------------------------------------------


def test_dpo_export_leaves_flagged_and_unpaired_out_unless_asked(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "pairs.jsonl", [
        _pair(0), _pair(1, flags=["rejected_not_worse"]), _pair(2, status="no_pair", rejected=False), _pair(3, flags=["chosen_unsafe"]),
    ])
    counts = export_dpo(src, tmp_path / "dpo")
    rows = _rows(tmp_path / "dpo")
    assert len(rows) == 1 and counts.rows == 1
    assert counts.left_out == {"flagged: rejected_not_worse": 1, "no pair": 1, "flagged: chosen_unsafe": 1}
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "prompt 0"}],
        "chosen": [{"role": "assistant", "content": "<think>\nchosen thought [P2]\n</think>\n\nchosen response"}],
        "rejected": [{"role": "assistant", "content": "<think>\nrejected thought [P2]\n</think>\n\nrejected response"}],
    }
    card = (tmp_path / "dpo" / "README.md").read_text()
    assert "trl.DPOTrainer" in card and "| left out: no pair | 1 |" in card and "w:1 (1)" in card
    assert export_dpo(src, tmp_path / "all", include_flagged=True).rows == 3
    loaded = datasets.load_dataset(str(tmp_path / "all"), split="train")
    assert loaded.column_names == ["prompt", "chosen", "rejected"] and loaded.num_rows == 3


def test_dpo_export_refuses_a_file_without_pairs(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "pairs.jsonl", [_pair(0, flags=["chosen_unsafe"]), _pair(1, status="no_pair", rejected=False)])
    with pytest.raises(InputError, match=r"pairs.jsonl: holds no pair to export \(flagged: chosen_unsafe: 1, no pair: 1\)"):
        export_dpo(src, tmp_path / "dpo")
    gen = _jsonl(tmp_path / "gen.jsonl", [_record(0)])
    with pytest.raises(InputError, match="gen.jsonl:1"):
        export_dpo(gen, tmp_path / "dpo")  # a generation output is not a pairs file


def test_dpo_export_refuses_pairs_the_judge_never_saw_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _jsonl(tmp_path / "pairs.jsonl", [_pair(0, status="no_pair", rejected=False, judged=False), _pair(1, judged=False),
                                            _pair(2, judged=False, flags=["chosen_unsafe"])])
    with pytest.raises(InputError, match=r"pairs.jsonl:2: pair 'q1' was never judged: grade the pairs first with `aidsafe judge "
                                         r".*pairs.jsonl -o JUDGED.jsonl`.*or pass --unjudged"):
        export_dpo(src, tmp_path / "dpo")
    assert not (tmp_path / "dpo").exists()  # refused: no folder left behind, not even an empty one
    assert main(["export", str(src), "--format", "dpo", "-o", str(tmp_path / "nested" / "dpo")]) == 2
    assert "was never judged" in capsys.readouterr().err
    assert not (tmp_path / "nested").exists()

    # --unjudged: exported, counted, and the card says so; flags still leave pairs out unless --include-flagged
    assert main(["export", str(src), "--format", "dpo", "--unjudged", "-o", str(tmp_path / "dpo")]) == 0
    assert "1 of the pairs without the judge's scores on both sides (--unjudged)" in capsys.readouterr().err
    assert [row["prompt"][0]["content"] for row in _rows(tmp_path / "dpo")] == ["prompt 1"]
    card = (tmp_path / "dpo" / "README.md").read_text()
    assert "**1 of these pairs have no judge score on both sides** (exported with `--unjudged`)" in card
    assert "| exported without the judge's scores on both sides (`--unjudged`) | 1 |" in card
    assert "| left out: flagged: chosen_unsafe | 1 |" in card and "No flagged pair is in this set." in card
    counts = export_dpo(src, tmp_path / "all", unjudged=True, include_flagged=True)
    assert (counts.rows, counts.unjudged) == (2, 2)

    # a judged file needs no --unjudged, and its card has no such warning
    judged = _jsonl(tmp_path / "judged.jsonl", [_pair(0), _pair(1, flags=["rejected_not_worse"])])
    assert export_dpo(judged, tmp_path / "judged").unjudged == 0
    assert "no judge score on both sides**" not in (tmp_path / "judged" / "README.md").read_text()
    assert "| exported without the judge's scores on both sides (`--unjudged`) | 0 |" in (tmp_path / "judged" / "README.md").read_text()
    assert main(["export", str(judged), "--format", "sft", "--unjudged", "-o", str(tmp_path / "s")]) == 2
    assert "--unjudged is for --format dpo" in capsys.readouterr().err


def _failed_judgement() -> dict[str, Any]:
    """A side the judge could not score (the call failed): a judgement, but no score."""
    return {**_judgement(1), "scores": {"faithfulness_cot_policy": None}, "unscored": ["faithfulness_cot_policy"], "error": "timed out"}


def test_a_pair_the_judge_could_not_score_needs_unjudged_even_with_include_flagged(tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``aidsafe judge`` gives a pair whose call failed the flag ``unjudged`` and a judgement with
    no score: ``--include-flagged`` must not let it through as if it had been judged."""
    failed = _pair(1, flags=["unjudged"])
    failed["judgement"]["rejected"] = _failed_judgement()
    src = _jsonl(tmp_path / "judged.jsonl", [_pair(0), failed, _pair(2, flags=["chosen_unsafe"])])
    assert export_dpo(src, tmp_path / "default").left_out == {"flagged: unjudged": 1, "flagged: chosen_unsafe": 1}
    with pytest.raises(InputError, match=r"judged.jsonl:2: pair 'q1' has no faithfulness_cot_policy score from the judge on its rejected "
                                         r"side: timed out \(flag unjudged\), so nothing checked that its rejected side is worse: judge "
                                         r"the pairs file that aidsafe pairs wrote again, into a new file - `aidsafe judge PAIRS.jsonl "
                                         r"-o JUDGED.jsonl` \(aidsafe judge refuses lines already judged.*or pass --unjudged"):
        export_dpo(src, tmp_path / "flagged", include_flagged=True)
    assert not (tmp_path / "flagged").exists()
    assert main(["export", str(src), "--format", "dpo", "--include-flagged", "-o", str(tmp_path / "flagged")]) == 2
    assert "pair 'q1' has no faithfulness_cot_policy score" in capsys.readouterr().err

    # with both options: in, and the card and the command line say which flags and that one pair was not judged
    assert main(["export", str(src), "--format", "dpo", "--include-flagged", "--unjudged", "-o", str(tmp_path / "all")]) == 0
    err = capsys.readouterr().err
    assert "wrote 3 rows" in err and "included although flagged (--include-flagged): " in err
    assert "unjudged 1" in err and "chosen_unsafe 1" in err and "1 of the pairs without the judge's scores on both sides" in err
    card = (tmp_path / "all" / "README.md").read_text()
    for fact in ("| included although flagged (`--include-flagged`): unjudged | 1 |",
                 "| included although flagged (`--include-flagged`): chosen_unsafe | 1 |",
                 "| exported without the judge's scores on both sides (`--unjudged`) | 1 |",
                 "**This set includes flagged pairs** (`--include-flagged`): ",
                 "`chosen_unsafe` 1 (the safety scorer found the chosen side violating too)",
                 "`unjudged` 1 (the judge could not score a side)",
                 "**1 of these pairs have no judge score on both sides**",
                 "in every pair the rejected side was produced by the ear-whisperer and found violating by the safety scorer"):
        assert fact in card, fact
    assert "No flagged pair" not in card


def test_the_refusal_advice_fits_a_partly_judged_file(tmp_path: Path) -> None:
    """``aidsafe judge`` refuses lines already judged: for a file that holds some, the advice is to
    judge the output of ``aidsafe pairs`` again, not this file."""
    src = _jsonl(tmp_path / "mixed.jsonl", [_pair(0), _pair(1, judged=False)])
    with pytest.raises(InputError, match=r"mixed.jsonl:2: pair 'q1' was never judged: judge the pairs file that aidsafe pairs wrote "
                                         r"again, into a new file - `aidsafe judge PAIRS.jsonl -o JUDGED.jsonl` \(aidsafe judge refuses "
                                         r"lines already judged, so not .*mixed.jsonl itself\)") as info:
        export_dpo(src, tmp_path / "dpo")
    assert f"aidsafe judge {src}" not in str(info.value)
    later = _jsonl(tmp_path / "later.jsonl", [_pair(0, judged=False), _pair(1)])  # judged lines after the refused one count too
    with pytest.raises(InputError, match=r"later.jsonl:1: .*judge the pairs file that aidsafe pairs wrote again"):
        export_dpo(later, tmp_path / "dpo")


def test_compare_does_not_count_unjudged_pairs_as_exportable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What ``aidsafe compare`` says goes into the DPO export is what the export takes without options."""
    failed = _pair(2)
    failed["judgement"]["chosen"] = _failed_judgement()
    for rows, exportable, needs in (([_pair(0, judged=False), _pair(1, judged=False)], 0, 2), ([_pair(0), failed], 1, 1)):
        src = _jsonl(tmp_path / "pairs.jsonl", rows)
        assert main(["compare", str(src), "--json", str(tmp_path / "report.json")]) == 0
        out = capsys.readouterr().out
        assert f"| in the DPO export (not flagged, judged) | {exportable} |" in out
        assert f"| not flagged but not judged: exported only with --unjudged | {needs} |" in out and "only with --unjudged |" in out
        section = json.loads((tmp_path / "report.json").read_text())["preference_pairs"]["pairs.jsonl"]
        assert (section["in_dpo_export"], section["needs_unjudged"]) == (exportable, needs)
        assert sum(row["in_dpo_export"] for row in section["rows"]) == exportable


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = _jsonl(tmp_path / "gen.jsonl", [_record(0), _record(1)])
    pairs = _jsonl(tmp_path / "pairs.jsonl", [_pair(0), _pair(1, flags=["rejected_not_worse"])])
    assert main(["export", str(gen), "--format", "sft", "-o", str(tmp_path / "sft"), "--cot", "reasoning"]) == 0
    assert "wrote 2 rows" in capsys.readouterr().err
    assert "reasoning_content" in _rows(tmp_path / "sft")[0]["messages"][1]
    assert main(["export", str(pairs), "--format", "dpo", "-o", str(tmp_path / "dpo")]) == 0
    assert "left out: flagged: rejected_not_worse 1" in capsys.readouterr().err
    assert main(["export", str(pairs), "--format", "dpo", "-o", str(tmp_path / "d2"), "--mix", str(gen)]) == 2
    assert main(["export", str(gen), "--format", "sft", "-o", str(tmp_path / "s2"), "--mix", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


@needs_train
def test_trl_reads_the_exports_unchanged(tmp_path: Path) -> None:
    """TRL's own preparation of both sets (chat template, tokenization) with the embedded model's tokenizer."""
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    from aidsafe.models.local import default_gguf_path

    gguf = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    export_sft(_jsonl(tmp_path / "gen.jsonl", [_record(0)]), tmp_path / "sft")
    export_dpo(_jsonl(tmp_path / "pairs.jsonl", [_pair(0)]), tmp_path / "dpo")
    sft = datasets.load_dataset(str(tmp_path / "sft"), split="train")[0]
    dpo = datasets.load_dataset(str(tmp_path / "dpo"), split="train")[0]
    assert is_conversational(sft) and is_conversational(dpo)
    text = apply_chat_template(sft, tok)["text"]
    assert "<think>\nthought 0.0 [P1]" in text and "response 0" in text
    rendered = apply_chat_template(dpo, tok)
    assert "chosen response" in rendered["chosen"] and "rejected response" in rendered["rejected"]
    assert "prompt 0" in rendered["prompt"] and "chosen" not in rendered["prompt"]


# --- training configs ---------------------------------------------------------------------------


def _config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "sft").mkdir(exist_ok=True)
    (tmp_path / "sft" / "train.jsonl").write_text(json.dumps({"messages": []}) + "\n")
    path = tmp_path / "train.yaml"
    path.write_text(body)
    return path


GOOD = """schema: aidsafe.train/v1
method: sft
model: embedded
data: sft
output_dir: runs/x
training:
  max_steps: 2
"""


def test_a_good_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    config, path = load_train_config(_config(tmp_path, GOOD), "sft")
    assert config.lora.r == 16 and config.quantization == "auto" and config.training == {"max_steps": 2}
    assert path == (tmp_path / "train.yaml").resolve()


@pytest.mark.parametrize(("body", "message"), [
    (GOOD.replace("output_dir:", "outptu_dir:"), r"train.yaml:5: outptu_dir: unknown key 'outptu_dir'; did you mean 'output_dir'\?"),
    (GOOD.replace("method: sft", "method: dpo"), r"train.yaml:2: method: this config is for 'dpo', not 'sft'"),
    (GOOD.replace("data: sft", "data: missing"), r"train.yaml:4: data: .*missing does not exist"),
    (GOOD.replace("aidsafe.train/v1", "aidsafe.train/v2"), r"train.yaml:1: schema: .*newer aidsafe"),
    (GOOD + "lora:\n  r: 0\n", r"train.yaml:9: lora.r: "),
    (GOOD.replace("model: embedded\n", ""), r"train.yaml:1: model: required field 'model' is missing"),
])
def test_config_errors_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(_config(tmp_path, body), "sft")


@needs_train
@pytest.mark.parametrize(("body", "message"), [
    (GOOD + "  learning_rat: 0.1\n", r"train.yaml:8: training.learning_rat: unknown key 'learning_rat': not a field of trl.SFTConfig; "
                                     r"did you mean 'learning_rate'\?"),
    (GOOD + "  beta: 0.1\n", r"train.yaml:8: training.beta: unknown key 'beta': not a field of trl.SFTConfig"),
    (GOOD.replace("model: embedded", "model: ./no/such/model"), r"train.yaml:3: model: base model .*no/such/model is not there"),
    (GOOD.replace("model: embedded", "model: weights.gguf"), r"train.yaml:3: model: base model .*weights.gguf is not there"),
    (GOOD + "quantization: 4bit\n", r"train.yaml:8: quantization: "),
    (GOOD.replace("data: sft", "data: sft/train.jsonl").replace("method: sft\n", ""), r"needs messages"),
])
def test_training_errors_before_any_training(tmp_path: Path, body: str, message: str) -> None:
    from aidsafe.train.trainer import train

    path = _config(tmp_path, body)
    if "needs messages" in message:
        (tmp_path / "sft" / "train.jsonl").write_text(json.dumps({"prompt": [], "chosen": [], "rejected": []}) + "\n")
    with pytest.raises(ConfigError, match=message):
        train("sft", path)
    assert not (tmp_path / "runs").exists()


@needs_train
def test_merge_true_on_a_base_stored_quantized_is_refused_before_training(tmp_path: Path) -> None:
    from aidsafe.train.trainer import train

    (tmp_path / "qbase").mkdir()
    (tmp_path / "qbase" / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    path = _config(tmp_path, GOOD.replace("model: embedded", "model: ./qbase") + "quantization: none\nmerge: true\n")
    with pytest.raises(ConfigError, match=r"train.yaml:9: merge: merge: true cannot merge into base model .*qbase: it is stored quantized "
                                          r"\(gptq 4-bit\).*set merge: false and, after training, merge onto a full-precision copy of it: "
                                          r"aidsafe train merge .*runs/x --base FULL_PRECISION_MODEL"):
        train("sft", path)
    assert not (tmp_path / "runs").exists()


def test_resume_goes_before_the_method_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``aidsafe train --resume sft CONFIG`` worked before ``train merge`` came; it still does."""
    import types

    from aidsafe.train import trainer

    calls: list[tuple[str, str, bool]] = []

    def fake_train(method: str, config: str, *, resume: bool = False) -> Any:
        calls.append((method, config, resume))
        summary = {"rows": 1, "data": "d", "base_model": {"name": "m"}, "quantization": "none", "device": "cpu", "steps": 0,
                   "seconds_train": 0, "log": []}
        return types.SimpleNamespace(summary=summary, losses=[], output_dir=tmp_path)

    monkeypatch.setattr(trainer, "train", fake_train)
    for argv, method, resume in ((["train", "--resume", "sft", "c.yaml"], "sft", True), (["train", "dpo", "c.yaml", "--resume"], "dpo", True),
                                 (["train", "sft", "c.yaml"], "sft", False)):
        assert main(argv) == 0, argv
        assert calls.pop() == (method, "c.yaml", resume)
    assert main(["train", "--resume", "merge", str(tmp_path)]) == 2
    assert "--resume is for sft and dpo" in capsys.readouterr().err


@needs_train
def test_a_cot_in_a_field_the_chat_template_ignores_is_refused(tmp_path: Path) -> None:
    from aidsafe.train.trainer import train

    gen = _jsonl(tmp_path / "gen.jsonl", [_record(0)])
    export_sft(gen, tmp_path / "sft", cot="reasoning")
    path = tmp_path / "train.yaml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError, match=r"train.yaml:4: data: the messages carry reasoning_content but the model's chat template never renders it"):
        train("sft", path)


# --- merging an adapter (aidsafe train merge) -------------------------------------------------------


def _tiny_llama(folder: Path, *, hidden: int = 16, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                 num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(str(folder))
    return folder


def _adapter_run(base: Path, run: Path, *, method: str = "sft", quantization: str = "none", seed: int = 0) -> Path:
    """A training output_dir as aidsafe train leaves it, for an adapter on ``base``: the adapter (B
    not zero, so that it changes the weights), a tokenizer and train_summary.json with the base's digest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from aidsafe.train.trainer import BaseModelRef, base_model_digest

    torch.manual_seed(seed)
    words = Tokenizer(WordLevel({f"w{i}": i for i in range(30)} | {"<unk>": 30, "</s>": 31}, unk_token="<unk>"))
    words.pre_tokenizer = Whitespace()  # type: ignore[assignment]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    ref = BaseModelRef(str(base), None, base.name)
    summary = {"method": method, "config": str(run.parent / f"{method}.yaml"), "quantization": quantization,
               "base_model": ref.as_dict(), "base_model_digest": base_model_digest(ref)}
    (run / "train_summary.json").write_text(json.dumps(summary))
    return run


def _tiny_run(tmp_path: Path, *, quantization: str = "none") -> tuple[Path, Path]:
    """A tiny random Llama saved as a model folder, and a training output_dir beside it: a LoRA
    adapter (B not zero, so that it changes the weights), a tokenizer and train_summary.json."""
    import torch

    torch.manual_seed(0)
    base = _tiny_llama(tmp_path / "base")
    return base, _adapter_run(base, tmp_path / "runs" / "sft", quantization=quantization)


@needs_train
def test_merge_folds_the_adapter_into_the_base_and_records_where_it_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aidsafe.train.merge import merge_adapter

    base, run = _tiny_run(tmp_path, quantization="4bit")  # as a QLoRA run records it: merged onto the base in full precision
    assert main(["train", "merge", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"merged the sft adapter of {run} into {base} (the adapter was trained on the base in 4 bits" in err
    merged = run / "merged"
    adapter = load_file(str(run / "adapter_model.safetensors"))
    before, after = load_file(str(base / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    assert not any("lora" in key for key in after) and set(after) == set(before)
    for module in ("layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj"):
        a = next(v for k, v in adapter.items() if module in k and "lora_A" in k)
        b = next(v for k, v in adapter.items() if module in k and "lora_B" in k)
        key = f"model.{module}.weight"
        assert torch.allclose(after[key], before[key] + (b @ a) * (8 / 4), atol=1e-6)
        assert (after[key] - before[key]).abs().max().item() > 1e-3
    assert torch.equal(after["model.layers.0.self_attn.k_proj.weight"], before["model.layers.0.self_attn.k_proj.weight"])
    provenance = json.loads((merged / "aidsafe_merge.json").read_text())
    assert provenance["adapter_dir"] == str(run) and provenance["base_model"]["source"] == str(base)
    assert provenance["adapter_config_sha256"] == hashlib.sha256((run / "adapter_config.json").read_bytes()).hexdigest()
    assert provenance["adapter_weights_sha256"] == hashlib.sha256((run / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert provenance["trained_quantization"] == "4bit" and provenance["merged_dtype"] == "float32" and provenance["method"] == "sft"
    assert provenance["base_model_merge"] is None and {"peft", "transformers", "torch"} <= set(provenance["versions"])
    assert AutoTokenizer.from_pretrained(str(merged)).eos_token == "</s>"
    assert AutoModelForCausalLM.from_pretrained(str(merged)).config.use_cache is True
    # merging again into an earlier merge of the same adapter replaces its contents
    (merged / "stale.txt").write_text("from before")
    (merged / "model.safetensors").unlink()  # (a new file: `after` maps the old one)
    shutil.copyfile(base / "model.safetensors", merged / "model.safetensors")  # wrong weights, to see them replaced
    assert merge_adapter(run).merged_dir == merged
    assert not (merged / "stale.txt").exists()
    again = load_file(str(merged / "model.safetensors"))
    assert set(again) == set(after) and all(torch.equal(again[key], after[key]) for key in after)
    assert not list(run.glob(".merged.partial-*"))


@needs_train
def test_merge_errors_name_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aidsafe.errors import AidsafeError
    from aidsafe.train.merge import merge_adapter

    with pytest.raises(AidsafeError, match=r"nowhere is not there: give the output_dir of an aidsafe train sft\|dpo run"):
        merge_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AidsafeError, match=r"empty holds no LoRA adapter \(adapter_config.json missing\)"):
        merge_adapter(tmp_path / "empty")
    assert main(["train", "merge", str(tmp_path / "empty")]) == 2
    assert f"aidsafe train: error: {tmp_path / 'empty'} holds no LoRA adapter" in capsys.readouterr().err

    base, run = _tiny_run(tmp_path)
    (run / "adapter_model.safetensors").rename(tmp_path / "weights")
    with pytest.raises(AidsafeError, match=r"sft holds no LoRA adapter \(adapter_model.safetensors or adapter_model.bin missing\)"):
        merge_adapter(run)
    (tmp_path / "weights").rename(run / "adapter_model.safetensors")
    (run / "train_summary.json").rename(tmp_path / "summary")
    with pytest.raises(AidsafeError, match=r"sft holds no train_summary.json, so its base model is unknown"):
        merge_adapter(run)
    (tmp_path / "summary").rename(run / "train_summary.json")

    # a folder that is not an earlier merge is never overwritten
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(AidsafeError, match=r"taken is there and is not an earlier merge: choose another folder \(-o\)"):
        merge_adapter(run, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"

    # a base stored in 4 bits cannot take the adapter: merge on a full-precision base
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}))
    _record_base_digest(run)  # as if the run had trained on it so (QLoRA on a checkpoint stored in 4 bits)
    with pytest.raises(AidsafeError, match=rf"base model {base} is stored quantized \(bitsandbytes 4-bit\): a LoRA adapter cannot be merged "
                                           rf"into quantized weights.*merge on a full-precision base: aidsafe train merge {run} --base"):
        merge_adapter(run)
    assert main(["train", "merge", str(run), "-o", str(tmp_path / "out")]) == 2
    assert "is stored quantized (bitsandbytes 4-bit)" in capsys.readouterr().err and not (tmp_path / "out").exists()

    # the base the run trained on has gone: say so, and how to name it
    base.rename(tmp_path / "moved")
    with pytest.raises(AidsafeError, match=rf"the base model this run trained on, {base}, is not there any more: give it with --base"):
        merge_adapter(run)
    (tmp_path / "moved" / "config.json").write_text(json.dumps(config))
    assert main(["train", "merge", str(run), "--base", str(tmp_path / "moved"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # --base errors name --base (the option), not the config's model field
    assert main(["train", "merge", str(run), "--base", str(tmp_path / "no" / "such"), "-o", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert f"aidsafe train: error: --base: base model {tmp_path / 'no' / 'such'} is not there" in err and "model:" not in err


def _record_base_digest(run: Path) -> None:
    from aidsafe.train.trainer import BaseModelRef, base_model_digest

    summary = json.loads((run / "train_summary.json").read_text())
    summary["base_model_digest"] = base_model_digest(BaseModelRef(**summary["base_model"]))
    (run / "train_summary.json").write_text(json.dumps(summary))


@needs_train
def test_merge_keeps_the_chain_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SFT -> merge -> DPO on the merged folder -> merge: a merge never replaces the base a run
    depends on, never adds an adapter a second time, replaces only its own earlier merge, and
    refuses a recorded base that changed since the run trained on it."""
    import torch
    from safetensors.torch import load_file

    from aidsafe.errors import AidsafeError
    from aidsafe.train.merge import merge_adapter

    base, sft = _tiny_run(tmp_path)
    merged_sft = merge_adapter(sft).merged_dir
    dpo = _adapter_run(merged_sft, tmp_path / "runs" / "dpo", method="dpo", seed=1)

    # the DPO merge must not replace the SFT merge it is built on (the default output is its own folder)
    for target, what in ((merged_sft, "is the base model of this merge"), (sft, "is an adapter the base model was built from"),
                         (base, "is a model the base model was built from"), (dpo, "is the folder of the adapter being merged"),
                         (tmp_path / "runs", f"holds {dpo}, the folder of the adapter being merged")):
        with pytest.raises(AidsafeError, match=f"{target} {what}: merging there would replace it; choose another folder"):
            merge_adapter(dpo, target)
    assert main(["train", "merge", str(dpo), "-o", str(merged_sft)]) == 2
    assert f"{merged_sft} is the base model of this merge" in capsys.readouterr().err
    assert (merged_sft / "aidsafe_merge.json").is_file() and json.loads((merged_sft / "aidsafe_merge.json").read_text())["method"] == "sft"

    # the merge of a merge: the DPO adapter on the merged SFT model, naming the merge it started from
    final = merge_adapter(dpo, tmp_path / "final")
    assert final.provenance["base_model_merge"]["adapter_dir"] == str(sft) and final.provenance["base_model_replaced"] is False
    before, after = load_file(str(merged_sft / "model.safetensors")), load_file(str(final.merged_dir / "model.safetensors"))
    assert (after["model.layers.0.self_attn.q_proj.weight"] - before["model.layers.0.self_attn.q_proj.weight"]).abs().max().item() > 1e-3
    assert torch.equal(after["model.layers.0.self_attn.k_proj.weight"], before["model.layers.0.self_attn.k_proj.weight"])

    # the same adapter a second time: on its own merge, or on a merge made from it
    for model in (merged_sft, final.merged_dir):
        with pytest.raises(AidsafeError, match=rf"base model {model} already holds this adapter: it descends from the merge of {sft} into "
                                               rf"{merged_sft} \(the same adapter weights.*would add it twice"):
            merge_adapter(sft, tmp_path / "twice", base=str(model))
    assert not (tmp_path / "twice").exists()

    # only an earlier merge of the same adapter folder is replaced
    with pytest.raises(AidsafeError, match=rf"{final.merged_dir} holds the merge of another adapter \({dpo}\), not of {sft}: choose another"):
        merge_adapter(sft, final.merged_dir)

    # the SFT merged again (a new merge record): the DPO run's base is no longer the one it trained on
    assert merge_adapter(sft).merged_dir == merged_sft
    with pytest.raises(AidsafeError, match=rf"the base model {merged_sft} is not the one this run trained on: merge_record_sha256 was "
                                           rf"[0-9a-f]{{16}}\.\.\., is [0-9a-f]{{16}}\.\.\.; .*\(at training, as {dpo / 'train_summary.json'} records it, "
                                           rf"against now\).*aidsafe train merge {dpo} --base {merged_sft}"):
        merge_adapter(dpo, tmp_path / "final")
    # new weights in a plain folder: their size or time differ
    torch.manual_seed(5)
    _tiny_llama(base)
    with pytest.raises(AidsafeError, match=rf"the base model {base} is not the one this run trained on: weights.model.safetensors.mtime_ns was "
                                           r"modified 20.*, is modified 20"):
        merge_adapter(sft)
    assert main(["train", "merge", str(dpo), "-o", str(tmp_path / "final"), "--base", str(merged_sft)]) == 0  # named deliberately
    capsys.readouterr()


@needs_train
def test_an_adapter_that_does_not_fit_the_base_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aidsafe.errors import AidsafeError
    from aidsafe.train.merge import merge_adapter

    base, run = _tiny_run(tmp_path)
    for name, model, detail in (
        ("wide", _tiny_llama(tmp_path / "wide", hidden=32), r"size mismatch for .*q_proj.lora_A"),
        ("short", _tiny_llama(tmp_path / "short", layers=1), r"4 adapter weights have no module in the base \(e.g. .*layers.1"),
        ("tall", _tiny_llama(tmp_path / "tall", layers=3), r"4 adapted modules of the base have no adapter weights \(e.g. .*layers.2"),
    ):
        with pytest.raises(AidsafeError, match=rf"the adapter of {run} does not fit the base model {model}: {detail}.*it was trained on {base}"):
            merge_adapter(run, tmp_path / f"out-{name}", base=str(model))
        assert not (tmp_path / f"out-{name}").exists()
    assert main(["train", "merge", str(run), "--base", str(tmp_path / "wide"), "-o", str(tmp_path / "out")]) == 2
    assert f"aidsafe train: error: the adapter of {run} does not fit the base model {tmp_path / 'wide'}: size mismatch" in capsys.readouterr().err
