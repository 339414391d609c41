"""``aidsafe train merge OUTPUT_DIR``: fold the LoRA adapter of a training run into its base model.

The paper trains DPO on the SFT-trained model. :func:`merge_adapter` loads the base model that
``aidsafe train sft|dpo`` recorded in ``train_summary.json`` (a GGUF file, such as the embedded
SmolLM2, is dequantized by transformers), puts the saved adapter on it with
``peft.PeftModel.from_pretrained``, folds it in with ``merge_and_unload()`` and writes a plain
transformers model folder with ``save_pretrained`` (safetensors), the run's tokenizer and
:data:`PROVENANCE_FILE` (the base model, the adapter, its config's digest, the versions). That
folder is a base model like any other: ``model: ./runs/sft/merged`` in a DPO config, vLLM,
``AutoModelForCausalLM.from_pretrained``.

A QLoRA run trained its adapter on a base loaded in 4 bits; the merge loads that base again in
full precision (as its checkpoint stores it) and merges there, since folding an adapter into 4-bit
weights would round it away. A base whose checkpoint is itself stored quantized (bitsandbytes,
GPTQ, AWQ, ...) is refused: merge onto a full-precision copy of it (``base=``, ``--base``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AidsafeError
from ..outputs import atomic_write_text

__all__ = ["ADAPTER_CONFIG", "PROVENANCE_FILE", "MergeResult", "merge_adapter"]

PROVENANCE_FILE = "aidsafe_merge.json"
"""Written next to the merged model: where it came from."""
ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class MergeResult:
    """Where the merged model went, and its provenance (the contents of :data:`PROVENANCE_FILE`)."""

    merged_dir: Path
    provenance: dict[str, Any]


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _stored_quantization(source: str) -> str | None:
    """How a (non-GGUF) checkpoint stores its weights when quantized (``bitsandbytes 4-bit``,
    ``gptq``, ...), read from its config without loading it; None for full precision or unknown."""
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    else:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source).to_dict()
        except (OSError, ValueError):
            return None  # loading it below says what is wrong
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quant, dict) or not quant:
        return None
    method = str(quant.get("quant_method") or "quantized")
    bits = "4-bit" if quant.get("load_in_4bit") else "8-bit" if quant.get("load_in_8bit") else f"{quant['bits']}-bit" if quant.get("bits") else ""
    return f"{method} {bits}".strip()


def _refuse_quantized(where: str, how: str, adapter_dir: Path) -> AidsafeError:
    return AidsafeError(
        f"base model {where} is stored quantized ({how}): a LoRA adapter cannot be merged into quantized weights without "
        f"rounding it away; merge on a full-precision base: aidsafe train merge {adapter_dir} --base FULL_PRECISION_MODEL "
        "(a folder or Hugging Face id of the same model in 16 or 32 bits)"
    )


def merge_adapter(output_dir: str | os.PathLike[str], merged_dir: str | os.PathLike[str] | None = None, *,
                  base: str | None = None) -> MergeResult:
    """Merge the adapter a training run saved in ``output_dir`` into its base model and save the
    result as a full transformers model in ``merged_dir`` (default ``output_dir/merged``).

    ``base`` replaces the base model the run recorded (``embedded``, a model folder, a ``.gguf``
    file or a Hugging Face id): a full-precision copy of a base stored quantized, or the same model
    moved elsewhere. Raises :class:`AidsafeError` naming the folder when ``output_dir`` holds no
    adapter or no ``train_summary.json``, when the base is stored quantized, or when ``merged_dir``
    is a folder that holds something other than an earlier merge.
    """
    from .trainer import SUMMARY_FILE, BaseModelRef, _load_model, _require_train_extra, _versions, resolve_base_model

    _require_train_extra()
    folder = Path(output_dir).expanduser().resolve()
    if not folder.is_dir():
        raise AidsafeError(f"{folder} is not there: give the output_dir of an aidsafe train sft|dpo run")
    adapter_config = folder / ADAPTER_CONFIG
    weights = next((folder / name for name in _ADAPTER_WEIGHTS if (folder / name).is_file()), None)
    if not adapter_config.is_file() or weights is None:
        missing = ADAPTER_CONFIG if not adapter_config.is_file() else " or ".join(_ADAPTER_WEIGHTS)
        raise AidsafeError(f"{folder} holds no LoRA adapter ({missing} missing): not the output_dir of a finished aidsafe train sft|dpo run")
    summary_file = folder / SUMMARY_FILE
    if not summary_file.is_file():
        raise AidsafeError(f"{folder} holds no {SUMMARY_FILE}, so its base model is unknown: not the output_dir of aidsafe train")
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        recorded = summary["base_model"]
        ref = BaseModelRef(recorded["source"], recorded.get("gguf_file"), recorded.get("name", ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise AidsafeError(f"{summary_file} is not a training summary ({exc!r})") from None
    if base is not None:
        ref = resolve_base_model(base)
    elif Path(ref.source).is_absolute() and not Path(ref.source, ref.gguf_file or "").exists():
        raise AidsafeError(f"the base model this run trained on, {Path(ref.source, ref.gguf_file or '')}, is not there any more: "
                           f"give it with --base (aidsafe train merge {folder} --base MODEL)")
    target = Path(merged_dir).expanduser().resolve() if merged_dir is not None else folder / "merged"
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / PROVENANCE_FILE).is_file())):
        raise AidsafeError(f"{target} is there and is not an earlier merge: choose another folder (-o)")
    if ref.gguf_file is None:
        how = _stored_quantization(ref.source)
        if how is not None:
            raise _refuse_quantized(ref.source, how, folder)

    model, _ = _load_model(ref, four_bit=False, with_tokenizer=False)  # full precision, whatever the run trained on
    if getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False):
        raise _refuse_quantized(ref.source, "loaded quantized", folder)
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))  # the run saved the tokenizer it trained with
    merged: Any = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    merged.config.use_cache = True  # a training run may have turned it off (gradient checkpointing)

    base_merge = Path(ref.source) / PROVENANCE_FILE  # the base is itself a merge (DPO on the merged SFT model)
    provenance: dict[str, Any] = {
        "merged_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "merged_dir": str(target),
        "adapter_dir": str(folder),
        "adapter_config_sha256": _sha256(adapter_config),
        "adapter_weights_sha256": _sha256(weights),
        "method": summary.get("method"),
        "train_config": summary.get("config"),
        "base_model": ref.as_dict(),
        "base_model_replaced": base is not None,
        "trained_quantization": summary.get("quantization"),
        "merged_dtype": str(getattr(merged, "dtype", "?")).removeprefix("torch."),
        "base_model_merge": json.loads(base_merge.read_text(encoding="utf-8")) if base_merge.is_file() else None,
        "versions": _versions(),
    }
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        merged.save_pretrained(str(staging))  # safetensors
        tokenizer.save_pretrained(str(staging))
        atomic_write_text(staging / PROVENANCE_FILE, json.dumps(provenance, indent=2, default=str) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return MergeResult(target, provenance)
