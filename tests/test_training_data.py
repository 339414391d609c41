"""Training sets in TRL's formats (``aidsafe export --format sft|dpo``) and training configs.

The exports are checked the way a trainer reads them: ``datasets.load_dataset(FOLDER)`` and, when
the ``[train]`` extra is installed, TRL's own data preparation. The real training runs are in
``test_train_e2e.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import datasets
import pytest

from aidsafe.cli import main
from aidsafe.errors import ConfigError, InputError
from aidsafe.train import export_dpo, export_sft
from aidsafe.train.config import load_train_config

_HAVE_TRAIN = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "trl", "peft"))
needs_train = pytest.mark.skipif(not _HAVE_TRAIN and not os.environ.get("AIDSAFE_REQUIRE_E2E"), reason="needs the [train] extra")


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


def _pair(i: int, *, status: str = "ok", flags: list[str] | None = None, rejected: bool = True) -> dict[str, Any]:
    return {
        "id": f"q{i}", "prompt": f"prompt {i}", "policy_set": {"name": "aidsafe5", "version": "1.0"}, "status": status,
        "chosen": _side("chosen"), "rejected": _side("rejected") if rejected else None,
        "stop_reason": "violation" if rejected else "budget", "flags": flags or [], "source": {"graph": "aidsafe"},
        "models": {"whisperer": "w:1", "target": "t:1", "scorer": "s:1"},
    }


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
def test_a_cot_in_a_field_the_chat_template_ignores_is_refused(tmp_path: Path) -> None:
    from aidsafe.train.trainer import train

    gen = _jsonl(tmp_path / "gen.jsonl", [_record(0)])
    export_sft(gen, tmp_path / "sft", cot="reasoning")
    path = tmp_path / "train.yaml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError, match=r"train.yaml:4: data: the messages carry reasoning_content but the model's chat template never renders it"):
        train("sft", path)
