"""Tests for aidsafe.inputs: reading prompts from JSONL, CSV, text and HF dataset inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from aidsafe.errors import InputError
from aidsafe.inputs import PromptItem, count_prompts, read_prompts


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write one JSON value per line and return the path."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _error(path: Path, **kwargs: Any) -> InputError:
    """Read the whole file and return the InputError it raises."""
    with pytest.raises(InputError) as info:
        list(read_prompts(path, **kwargs))
    return info.value


# --- happy paths --------------------------------------------------------------------


def test_jsonl_with_ids(tmp_path: Path) -> None:
    records = [{"id": "a", "prompt": "hi"}, {"id": 7, "prompt": "yo"}]
    path = _write_jsonl(tmp_path / "p.jsonl", records)
    assert list(read_prompts(path)) == [
        PromptItem(id="a", prompt="hi", source=str(path), line=1),
        PromptItem(id="7", prompt="yo", source=str(path), line=2),
    ]


def test_jsonl_default_ids_are_record_numbers(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    items = list(read_prompts(path))
    assert [(i.id, i.line, i.prompt) for i in items] == [("1", 1, "one"), ("2", 2, "two")]


def test_jsonl_blank_lines_skipped_and_lines_kept(tmp_path: Path) -> None:
    path = tmp_path / "p.ndjson"
    path.write_text('\n{"prompt": "a"}\n   \n\n{"prompt": "b"}\n\n', encoding="utf-8")
    items = list(read_prompts(path))
    assert [(i.id, i.line) for i in items] == [("1", 2), ("2", 5)]  # blank lines are no records


def test_custom_prompt_and_id_fields(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.json", [{"key": "k1", "text": "hello", "prompt": 3}])
    items = list(read_prompts(path, prompt_field="text", id_field="key"))
    assert items == [PromptItem(id="k1", prompt="hello", source=str(path), line=1)]


def test_template_syntax_comes_back_verbatim(tmp_path: Path) -> None:
    prompt = "  What is {{ 7*7 }}? {% for x in y %}{{ x }}{% endfor %}  "
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": prompt}])
    assert next(read_prompts(path)).prompt == prompt
    txt = tmp_path / "p.txt"
    txt.write_text(prompt + "\n", encoding="utf-8")
    assert next(read_prompts(txt)).prompt == prompt


def test_csv_quoted_comma_and_embedded_newline(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        'id,prompt\nx1,plain\nx2,"hello, world"\nx3,"line one\nline two"\nx4,last\n',
        encoding="utf-8",
        newline="",
    )
    items = list(read_prompts(path))
    assert [i.id for i in items] == ["x1", "x2", "x3", "x4"]
    assert items[1].prompt == "hello, world"
    assert items[2].prompt == "line one\nline two"
    assert [i.line for i in items] == [2, 3, 5, 6]


def test_csv_default_ids(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("prompt,other\nfirst,1\nsecond,2\n", encoding="utf-8")
    items = list(read_prompts(path))
    assert [(i.id, i.line, i.prompt) for i in items] == [("1", 2, "first"), ("2", 3, "second")]  # data rows


def test_txt_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"first\r\n\n  \nsecond  \n")
    items = list(read_prompts(path))
    assert [(i.id, i.line, i.prompt) for i in items] == [("1", 1, "first"), ("2", 4, "second  ")]


def test_unknown_suffix_is_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "prompts.dat"
    path.write_text('{"prompt": "x"}\n', encoding="utf-8")
    assert next(read_prompts(path)).prompt == '{"prompt": "x"}'


def test_limit_stops_early_without_validating_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\nnot json\n', encoding="utf-8")
    assert [i.prompt for i in read_prompts(path, limit=2)] == ["a", "b"]
    assert count_prompts(path, limit=1) == 1


def test_count_prompts(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{n}"} for n in range(5)])
    assert count_prompts(path) == 5
    assert count_prompts(path, limit=10) == 5


def test_count_prompts_validates_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"p\.jsonl:2:"):
        count_prompts(path)


def test_accepts_str_path_and_keeps_it_as_source(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    assert next(read_prompts(str(path))).source == str(path)


# --- Hugging Face datasets ----------------------------------------------------------


def test_hf_dataset_dir(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "ds"
    datasets.Dataset.from_dict({"prompt": ["a", "b"], "extra": [1, 2]}).save_to_disk(str(target))
    items = list(read_prompts(target))
    assert items == [
        PromptItem(id="1", prompt="a", source=str(target), line=1),
        PromptItem(id="2", prompt="b", source=str(target), line=2),
    ]


def test_hf_dataset_ids_and_single_split_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "dd"
    split = datasets.Dataset.from_dict({"q": ["x"], "uid": [42]})
    datasets.DatasetDict({"train": split}).save_to_disk(str(target))
    assert list(read_prompts(target, prompt_field="q", id_field="uid")) == [
        PromptItem(id="42", prompt="x", source=str(target), line=1)
    ]


def test_hf_dataset_dict_with_two_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "dd"
    split = datasets.Dataset.from_dict({"prompt": ["x"]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(target))
    err = _error(target)
    assert "dd" in str(err)
    assert "'test'" in str(err) and "'train'" in str(err)


def test_hf_dataset_missing_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["a"], "label": [0]}).save_to_disk(str(target))
    err = _error(target)
    assert err.field == "prompt"
    assert "'label'" in str(err) and "'text'" in str(err)
    assert str(target) in str(err)


def test_hf_dataset_bad_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "ds"
    datasets.Dataset.from_dict({"prompt": ["ok", " "]}).save_to_disk(str(target))
    err = _error(target)
    assert f"{target}:2:" in str(err)
    assert err.field == "prompt"


def test_non_dataset_directory(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    (tmp_path / "empty_dir").mkdir()
    err = _error(tmp_path / "empty_dir")
    assert "empty_dir" in str(err)


# --- errors -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match="file not found") as info:
        read_prompts(path)
    assert "nope.jsonl" in str(info.value)
    assert info.value.file == str(path)


@pytest.mark.parametrize("name", ["e.jsonl", "e.csv", "e.txt"])
@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = _error(path)
    assert "no prompts found" in str(err)
    assert name in str(err)
    with pytest.raises(InputError, match="no prompts found"):
        count_prompts(path)


def test_csv_header_only_has_no_prompts(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("id,prompt\n", encoding="utf-8")
    assert "no prompts found" in str(_error(path))


_TWO_GOOD_LINES = {
    ".jsonl": b'{"prompt": "a"}\n{"prompt": "b"}\n',
    ".csv": b"prompt\na\n",
    ".txt": b"a\nb\n",
}


@pytest.mark.parametrize("suffix", sorted(_TWO_GOOD_LINES))
def test_invalid_utf8_names_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(_TWO_GOOD_LINES[suffix] + b"caf\xe9\n")
    err = _error(path)
    assert f"bad{suffix}:3:" in str(err)
    assert "UTF-8" in str(err)


@pytest.mark.parametrize("suffix", sorted(_TWO_GOOD_LINES))
def test_nul_byte_is_binary_data(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"nul{suffix}"
    path.write_bytes(_TWO_GOOD_LINES[suffix] + b"ab\x00cd\n")
    err = _error(path)
    assert "binary data" in str(err)
    assert f"nul{suffix}:3:" in str(err)
    assert err.line == 3


def test_jsonl_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n', encoding="utf-8")
    err = _error(path)
    assert "p.jsonl:3:" in str(err)
    assert "invalid JSON" in str(err)
    assert "property name" in str(err)


@pytest.mark.parametrize("value", [["prompt"], "prompt", 3, None])
def test_jsonl_value_not_object(tmp_path: Path, value: Any) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, value])
    err = _error(path)
    assert "p.jsonl:2:" in str(err)
    assert "JSON object" in str(err)


def test_missing_prompt_field_lists_fields(tmp_path: Path) -> None:
    records = [{"prompt": "a"}, {"zeta": 1, "alpha": 2, "text": "x"}]
    path = _write_jsonl(tmp_path / "p.jsonl", records)
    err = _error(path)
    message = str(err)
    assert "p.jsonl:2: prompt:" in message
    assert err.field == "prompt" and err.line == 2
    assert "['alpha', 'text', 'zeta']" in message
    assert "--prompt-field" in message


def test_missing_custom_prompt_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    err = _error(path, prompt_field="question")
    assert "p.jsonl:1: question:" in str(err)
    assert err.field == "question"


@pytest.mark.parametrize("value", [5, None, ["a"], {"a": 1}, True])
def test_prompt_not_a_string(tmp_path: Path, value: Any) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": value}])
    err = _error(path)
    assert "p.jsonl:3: prompt:" in str(err)
    assert "string" in str(err)


@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_empty_prompt(tmp_path: Path, value: str) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": value}])
    err = _error(path)
    assert "p.jsonl:2: prompt:" in str(err)
    assert "empty" in str(err)


def test_empty_prompt_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\n1,a\n2,\n", encoding="utf-8")
    err = _error(path)
    assert "p.csv:3: prompt:" in str(err)


@pytest.mark.parametrize("value", ["", " ", None, 1.5, False])
def test_bad_id_value(tmp_path: Path, value: Any) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"id": value, "prompt": "a"}])
    err = _error(path)
    assert "p.jsonl:1: id:" in str(err)
    assert err.field == "id"


def test_duplicate_id_jsonl(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": "x", "prompt": "a"}, {"id": "y", "prompt": "b"}, {"id": "x", "prompt": "c"}],
    )
    err = _error(path)
    assert "p.jsonl:3: id:" in str(err)
    assert "'x'" in str(err)
    assert "line 1" in str(err)
    assert err.field == "id" and err.line == 3


def test_duplicate_between_explicit_and_default_id(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"id": "2", "prompt": "a"}, {"prompt": "b"}])
    err = _error(path)
    assert "p.jsonl:2: id:" in str(err)
    assert "line 1" in str(err)


def test_duplicate_id_csv_with_custom_id_field(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("key,prompt\nk,a\nj,b\nk,c\n", encoding="utf-8")
    err = _error(path, id_field="key")
    assert "p.csv:4: key:" in str(err)
    assert "line 2" in str(err)


def test_csv_blank_header_with_data(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("\nprompt\na\n", encoding="utf-8")
    err = _error(path)
    assert "p.csv:1:" in str(err)
    assert "header" in str(err)


def test_csv_without_prompt_column(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,question\n1,a\n", encoding="utf-8")
    err = _error(path)
    assert "p.csv:1: prompt:" in str(err)
    assert "'id', 'question'" in str(err)
    assert "--prompt-field" in str(err)


def test_csv_short_row(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\n1,a\n2\n", encoding="utf-8")
    err = _error(path)
    assert "p.csv:3: prompt:" in str(err)


def test_errors_stop_iteration_at_bad_line_only(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": 1}\n', encoding="utf-8")
    items = read_prompts(path)
    assert next(items).prompt == "a"
    with pytest.raises(InputError, match=r"p\.jsonl:2:"):
        next(items)


def test_negative_limit_rejected(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match="-1"):
        read_prompts(path, limit=-1)


def test_huge_integer_and_deep_nesting_are_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": ' + "1" * 5000 + "}\n", encoding="utf-8")
    assert "p.jsonl:2:" in str(_error(path))
    path.write_text('{"prompt": "a"}\n' + "[" * 100_000 + "\n", encoding="utf-8")
    err = _error(path)
    assert "p.jsonl:2:" in str(err) and "nested too deeply" in str(err)


@pytest.mark.parametrize("field", ["prompt", "id"])
def test_lone_surrogate_is_rejected(tmp_path: Path, field: str) -> None:
    # json.loads turns "\ud800" into a lone surrogate, which the UTF-8 output file cannot hold
    path = tmp_path / "p.jsonl"
    record = {"id": "x", "prompt": "a"}
    text = json.dumps(record).replace('"x"' if field == "id" else '"a"', '"bad \\ud800"')
    path.write_text('{"prompt": "ok", "id": "o"}\n' + text + "\n", encoding="utf-8")
    err = _error(path)
    assert f"p.jsonl:2: {field}:" in str(err)
    assert "surrogate" in str(err)


# --- lenient mode -------------------------------------------------------------------


def _lenient(path: Path, **kwargs: Any) -> tuple[list[PromptItem], list[InputError]]:
    """Read the file leniently; return the items and the problems collected."""
    problems: list[InputError] = []
    items = list(read_prompts(path, lenient=True, problems=problems, **kwargs))
    return items, problems


_GOOD = '{"id": "g1", "prompt": "first"}\n'
_GOOD_LAST = '{"id": "g2", "prompt": "last"}\n'


@pytest.mark.parametrize(
    ("bad_line", "field", "words"),
    [
        ('{"prompt": "b",}\n', None, "invalid JSON"),
        ('["not", "an", "object"]\n', None, "JSON object"),
        ('{"text": "no prompt"}\n', "prompt", "missing prompt field"),
        ('{"prompt": 5}\n', "prompt", "string"),
        ('{"prompt": null}\n', "prompt", "string"),
        ('{"prompt": ""}\n', "prompt", "empty"),
        ('{"prompt": " \\t\\n "}\n', "prompt", "empty"),
        ('{"prompt": "x", "id": 1.5}\n', "id", "string or an integer"),
        ('{"prompt": "dup", "id": "g1"}\n', "id", "duplicate id"),
        ('{"prompt": "lone \\ud800"}\n', "prompt", "surrogate"),
    ],
)
def test_lenient_skips_bad_jsonl_line(tmp_path: Path, bad_line: str, field: str | None, words: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(_GOOD + "\n" + bad_line + _GOOD_LAST, encoding="utf-8")
    items, problems = _lenient(path)
    assert [(i.id, i.prompt, i.line) for i in items] == [("g1", "first", 1), ("g2", "last", 4)]
    assert len(problems) == 1
    problem = problems[0]
    assert isinstance(problem, InputError)
    assert (problem.file, problem.line, problem.field) == (str(path), 3, field)
    assert words in problem.message
    assert str(problem).startswith(f"{path}:3: ")
    # strict mode still refuses the file at that very line
    assert _error(path).line == 3


@pytest.mark.parametrize("suffix", sorted(_TWO_GOOD_LINES))
@pytest.mark.parametrize(("garbage", "words"), [(b"caf\xe9 \xff\n", "UTF-8"), (b"ab\x00cd\n", "binary data")])
def test_lenient_skips_undecodable_and_binary_lines(tmp_path: Path, suffix: str, garbage: bytes, words: str) -> None:
    path = tmp_path / f"bad{suffix}"
    good_after = {".jsonl": b'{"prompt": "c"}\n', ".csv": b"c\n", ".txt": b"c\n"}[suffix]
    path.write_bytes(_TWO_GOOD_LINES[suffix] + garbage + good_after)
    items, problems = _lenient(path)
    assert [i.prompt for i in items] == {".jsonl": ["a", "b", "c"], ".csv": ["a", "c"], ".txt": ["a", "b", "c"]}[suffix]
    assert [(p.line, p.file) for p in problems] == [(3, str(path))]
    assert words in problems[0].message
    assert items[-1].line == 4
    assert f"bad{suffix}:3:" in str(_error(path))


def test_lenient_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(
        b"id,prompt\n"
        b"1,ok one\n"
        b"2\n"  # short row: line 3
        b"3,\n"  # empty prompt: line 4
        b'4,"multi\nline"\n'  # lines 5-6, valid
        b"1,duplicate\n"  # line 7
        b'5,"bad \xff inside\na quoted field"\n'  # lines 8-9: the whole row is skipped
        b"6,a\rb\n"  # bare CR outside quotes: the csv module rejects line 10
        b"7,ok last\n"
    )
    items, problems = _lenient(path)
    assert [(i.id, i.prompt, i.line) for i in items] == [("1", "ok one", 2), ("4", "multi\nline", 6), ("7", "ok last", 11)]
    assert [(p.line, p.field) for p in problems] == [(3, "prompt"), (4, "prompt"), (7, "id"), (8, None), (10, None)]
    assert "fewer fields" in problems[0].message
    assert "duplicate" in problems[2].message
    assert "UTF-8" in problems[3].message
    assert "malformed CSV" in problems[4].message
    assert _error(path).line == 3


def test_lenient_txt_and_limit_counts_valid_prompts(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes(b"one\n\xff\ntwo\nthree\n")
    items, problems = _lenient(path, limit=2)
    assert [i.prompt for i in items] == ["one", "two"]
    assert [p.line for p in problems] == [2]
    problems = []
    assert count_prompts(path, lenient=True, problems=problems) == 3
    assert [p.line for p in problems] == [2]


def test_lenient_without_problems_list_skips_silently(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": 1}\n{"prompt": "a"}\n', encoding="utf-8")
    assert [i.prompt for i in read_prompts(path, lenient=True)] == ["a"]
    assert count_prompts(path, lenient=True) == 1


def test_lenient_hf_dataset_bad_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "ds"
    datasets.Dataset.from_dict({"prompt": ["ok", " ", "fine"]}).save_to_disk(str(target))
    items, problems = _lenient(target)
    assert [(i.id, i.prompt) for i in items] == [("1", "ok"), ("3", "fine")]  # the bad row keeps its number
    assert [(p.line, p.field) for p in problems] == [(2, "prompt")]


# file-level problems raise in lenient mode too


def test_lenient_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_prompts(tmp_path / "nope.jsonl", lenient=True)
    with pytest.raises(InputError, match="file not found"):
        count_prompts(tmp_path / "nope.jsonl", lenient=True)


@pytest.mark.parametrize("name", ["e.jsonl", "e.csv", "e.txt"])
def test_lenient_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InputError, match="no prompts found"):
        _lenient(path)


def test_lenient_no_valid_prompt_raises_naming_first_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": 1}\nnot json\n', encoding="utf-8")
    problems: list[InputError] = []
    with pytest.raises(InputError, match="no valid prompts") as info:
        count_prompts(path, lenient=True, problems=problems)
    assert info.value.file == str(path)
    assert "p.jsonl:1: prompt:" in str(info.value)
    assert [p.line for p in problems] == [1, 2]


def test_lenient_csv_header_problems_raise(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,question\n1,a\n", encoding="utf-8")
    with pytest.raises(InputError, match="no prompt column"):
        _lenient(path)
    path.write_text("\nprompt\na\n", encoding="utf-8")
    with pytest.raises(InputError, match="header is blank"):
        _lenient(path)
    path.write_bytes(b"id,prompt,caf\xe9\n1,a,b\n")
    with pytest.raises(InputError, match="UTF-8") as info:
        _lenient(path)
    assert info.value.line == 1


def test_lenient_hf_dataset_missing_column_raises(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    target = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(target))
    with pytest.raises(InputError, match="no prompt column"):
        _lenient(target)


def test_format_problems_caps_the_list(tmp_path: Path) -> None:
    from aidsafe.inputs import format_problems

    problems = [InputError("bad", file="f.jsonl", line=n, field="prompt") for n in range(1, 26)]
    lines = format_problems(problems).splitlines()
    assert len(lines) == 21
    assert lines[0] == "f.jsonl:1: prompt: bad"
    assert lines[-1] == "... and 5 more"
    assert format_problems(problems[:3]).splitlines()[-1] == "f.jsonl:3: prompt: bad"


# --- CLI ------------------------------------------------------------------------------


def test_cli_lenient_runs_valid_prompts_and_names_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aidsafe.cli import main

    for name in [n for n in os.environ if n.startswith("AIDSAFE_")]:  # no shell setting may leak in
        monkeypatch.delenv(name)
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'{"id": "a", "prompt": "What is the capital of France?"}\n'
        b'{"id": "b", "prompt": ""}\n'
        b"{not json\n"
        b'{"id": "a", "prompt": "duplicate"}\n'
        b'{"id": "c", "prompt": "caf\xe9"}\n'
        b'{"id": "d", "prompt": "How do vaccines work?"}\n'
    )
    out = tmp_path / "out.jsonl"
    argv = ["generate", str(src), "-o", str(out), "--backend", "fake", "--no-progress"]
    assert main(argv) == 2
    assert not out.exists()
    assert f"{src}:2: prompt:" in capsys.readouterr().err

    assert main([*argv, "--lenient"]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == ["a", "d"]
    assert {r["prompt"] for r in records} == {"What is the capital of France?", "How do vaccines work?"}
    err = capsys.readouterr().err
    for line in (2, 3, 4, 5):
        assert f"{src}:{line}: " in err
    assert f"{src}:1:" not in err and f"{src}:6:" not in err
    sidecar = json.loads((tmp_path / "out.jsonl.summary.json").read_text(encoding="utf-8"))
    assert sidecar["run"]["skipped_input_lines"] == 4


def test_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aidsafe.errors import InputError
    from aidsafe.inputs import read_prompts

    with_ids = tmp_path / "with_ids.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["first", "second"], "other": [1, 2]}), with_ids)
    assert [(i.id, i.prompt, i.line) for i in read_prompts(with_ids)] == [("a", "first", 1), ("b", "second", 2)]
    rows = tmp_path / "rows.pq"
    pq.write_table(pa.table({"question": ["x", "y", "z"]}), rows)
    assert [i.id for i in read_prompts(rows, prompt_field="question")] == ["1", "2", "3"]  # row numbers from 1, as every reader's
    with pytest.raises(InputError, match=r"rows.pq.*no prompt column 'prompt'.*'question'"):
        list(read_prompts(rows))
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet", encoding="utf-8")
    with pytest.raises(InputError, match="broken.parquet.*not a Parquet file"):
        list(read_prompts(broken))


def test_parquet_and_hf_dataset_carry_the_extra_fields(tmp_path: Path) -> None:
    """``extra_fields`` reach ``PromptItem.extra`` from the columnar readers too (the SFT_OG export
    reads each prompt's own response this way); a column the file lacks is simply absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    datasets = pytest.importorskip("datasets")
    columns = {"id": ["a", "b"], "prompt": ["first", "second"], "response": ["r1", None], "other": [1, 2]}
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table(columns), parquet)
    saved = tmp_path / "ds"
    datasets.Dataset.from_dict(columns).save_to_disk(str(saved))
    for source in (parquet, saved):
        items = list(read_prompts(source, extra_fields=("response", "missing")))
        assert [(i.id, dict(i.extra)) for i in items] == [("a", {"response": "r1"}), ("b", {})], source
        assert [dict(i.extra) for i in read_prompts(source)] == [{}, {}]  # nothing asked, nothing carried
