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

Before loading anything the merge checks that it will not harm the chain it belongs to: the base
the run recorded must still be the one it trained on (``base_model_digest`` in
``train_summary.json``; ``--base`` names another deliberately); the base must not already hold
this adapter (its merge provenance names the same adapter weights); and the output folder must
not be the base, a folder the base was built from, or the adapter's own folder, and may replace
only an earlier merge of the same adapter folder. An adapter that does not fit the base (other
shapes, other module names) is an error naming both.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AidsafeError
from ..outputs import atomic_write_text
from .trainer import MERGE_RECORD, _sha256

__all__ = ["ADAPTER_CONFIG", "PROVENANCE_FILE", "MergeResult", "merge_adapter"]

PROVENANCE_FILE = MERGE_RECORD
"""Written next to the merged model: where it came from."""
ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class MergeResult:
    """Where the merged model went, and its provenance (the contents of :data:`PROVENANCE_FILE`)."""

    merged_dir: Path
    provenance: dict[str, Any]


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


def _merge_record(folder: Path) -> dict[str, Any] | None:
    """A folder's :data:`PROVENANCE_FILE` (None when it has none or it is not a JSON object)."""
    file = folder / PROVENANCE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _merge_chain(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A merge's provenance and those of the merges under it (``base_model_merge``), newest first."""
    chain: list[dict[str, Any]] = []
    while isinstance(record, dict) and len(chain) < 64:
        chain.append(record)
        record = record.get("base_model_merge")
    return chain


def _local(path: Any) -> Path | None:
    if not isinstance(path, str) or not path:
        return None
    candidate = Path(path)
    return candidate.resolve() if candidate.is_absolute() else None


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _difference(then: dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    """What changed between two :func:`~aidsafe.train.trainer.base_model_digest` values, in words."""
    if now is None:
        return "it can no longer be read"
    old, new = _flat(then or {}), _flat(now)

    def shown(key: str, value: Any) -> str:
        if value is None:
            return "absent" if key not in old or key not in new else "none"
        if key.endswith("mtime_ns") and isinstance(value, int):
            return "modified " + datetime.datetime.fromtimestamp(value / 1e9, datetime.timezone.utc).isoformat(timespec="microseconds")
        if key.endswith("sha256") and isinstance(value, str):
            return value[:16] + "..."
        return str(value)

    return "; ".join(f"{key} was {shown(key, old.get(key))}, is {shown(key, new.get(key))}"
                     for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key))


def _short_error(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(exc).__name__)
    return detail[:300].rstrip(".")


def _adapter_keys(weights: Path) -> set[str]:
    """The names of the weights an adapter file holds."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            return set(handle.keys())
    import torch

    return set(torch.load(str(weights), map_location="cpu", weights_only=True))


def merge_adapter(output_dir: str | os.PathLike[str], merged_dir: str | os.PathLike[str] | None = None, *,
                  base: str | None = None) -> MergeResult:
    """Merge the adapter a training run saved in ``output_dir`` into its base model and save the
    result as a full transformers model in ``merged_dir`` (default ``output_dir/merged``).

    ``base`` replaces the base model the run recorded (``embedded``, a model folder, a ``.gguf``
    file or a Hugging Face id): a full-precision copy of a base stored quantized, or the same model
    moved elsewhere. Without it, the recorded base must still be the one the run trained on (the
    digest ``train_summary.json`` recorded: :func:`~aidsafe.train.trainer.base_model_digest`).

    Raises :class:`AidsafeError` naming the folder when ``output_dir`` holds no adapter or no
    ``train_summary.json``; when the recorded base changed since the run; when the base is stored
    quantized, or already holds this adapter (its merge provenance has the same adapter weights);
    when the adapter does not fit the base (other shapes or module names); and when ``merged_dir``
    is the base, a folder in the base's merge chain, the adapter's own folder (or a folder above
    one of those), or a folder holding anything but an earlier merge of this same adapter folder.
    Everything but the last is checked before the model is loaded.
    """
    from .trainer import SUMMARY_FILE, BaseModelRef, _load_model, _require_train_extra, _versions, base_model_digest, resolve_base_model

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
        ref = resolve_base_model(base, field="--base")
    where = Path(ref.source, ref.gguf_file or "")
    if base is None:
        if Path(ref.source).is_absolute() and not where.exists():
            raise AidsafeError(f"the base model this run trained on, {where}, is not there any more: "
                               f"give it with --base (aidsafe train merge {folder} --base MODEL)")
        then = summary.get("base_model_digest")
        if then is not None:
            now = base_model_digest(ref)
            if now != then:
                raise AidsafeError(
                    f"the base model {where} is not the one this run trained on: {_difference(then, now)} "
                    f"(at training, as {summary_file} records it, against now); the adapter would be merged onto other weights: "
                    f"train again on this base, or put back the one it trained on; to merge onto {where} all the same, name it "
                    f"deliberately: aidsafe train merge {folder} --base {where}"
                )

    adapter_sha = _sha256(weights)
    base_dir = Path(ref.source).resolve() if _local(ref.source) is not None or Path(ref.source).exists() else None
    chain = _merge_chain(_merge_record(base_dir)) if base_dir is not None and ref.gguf_file is None else []
    for record in chain:
        if record.get("adapter_weights_sha256") == adapter_sha:
            raise AidsafeError(
                f"base model {where} already holds this adapter: it descends from the merge of {record.get('adapter_dir')} into "
                f"{record.get('merged_dir')} (the same adapter weights, sha256 {adapter_sha[:12]}...), so merging it again would add "
                f"it twice; merge onto the base the run trained on (leave out --base) or onto a model without this adapter"
            )

    target = Path(merged_dir).expanduser().resolve() if merged_dir is not None else folder / "merged"
    protected: list[tuple[Path, str]] = [(folder, "the folder of the adapter being merged")]
    if base_dir is not None:
        protected.append((base_dir, "the base model of this merge"))
    for record in chain:
        for key, what in (("merged_dir", "a merge the base model was built from"), ("adapter_dir", "an adapter the base model was built from")):
            path = _local(record.get(key))
            if path is not None:
                protected.append((path, what))
        path = _local((record.get("base_model") or {}).get("source"))
        if path is not None:
            protected.append((path, "a model the base model was built from"))
    for path, what in sorted(protected, key=lambda item: item[0] != target):  # "is" before "holds"
        if target == path or target in path.parents:
            which = "is" if target == path else f"holds {path},"
            raise AidsafeError(f"{target} {which} {what}: merging there would replace it; choose another folder (-o)")
    if target.exists():
        earlier = _merge_record(target) if target.is_dir() else None
        if not target.is_dir() or (any(target.iterdir()) and earlier is None):
            raise AidsafeError(f"{target} is there and is not an earlier merge: choose another folder (-o)")
        if earlier is not None and earlier.get("adapter_dir") != str(folder):
            raise AidsafeError(f"{target} holds the merge of another adapter ({earlier.get('adapter_dir')}), not of {folder}: "
                               "choose another folder (-o)")
    if ref.gguf_file is None:
        how = _stored_quantization(ref.source)
        if how is not None:
            raise _refuse_quantized(ref.source, how, folder)

    base_digest = base_model_digest(ref)
    model, _ = _load_model(ref, four_bit=False, with_tokenizer=False, field="--base" if base is not None else None)  # full precision
    if getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False):
        raise _refuse_quantized(ref.source, "loaded quantized", folder)
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))  # the run saved the tokenizer it trained with
    trained = Path(str(recorded.get("source", "?")), recorded.get("gguf_file") or "")

    def misfit(detail: str) -> AidsafeError:
        return AidsafeError(f"the adapter of {folder} does not fit the base model {where}: {detail}; it was trained on {trained}: "
                            "merge it onto that model (or a full-precision copy of it, --base)")

    try:
        adapted: Any = PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as exc:  # a size mismatch; peft's NoMatchingPeftModuleError (a ValueError)
        raise misfit(_short_error(exc)) from None
    # peft loads what fits and only warns (or says nothing) about the rest: a base with fewer or
    # more layers takes part of the adapter; every saved weight must have found its module
    from peft import get_peft_model_state_dict

    saved, wanted = _adapter_keys(weights), set(get_peft_model_state_dict(adapted))
    if saved != wanted:
        unused, missing = sorted(saved - wanted), sorted(wanted - saved)
        parts = ([f"{len(unused)} adapter weights have no module in the base (e.g. {unused[0]})"] if unused else []) + (
            [f"{len(missing)} adapted modules of the base have no adapter weights (e.g. {missing[0]})"] if missing else [])
        raise misfit("; ".join(parts))
    merged: Any = adapted.merge_and_unload()
    merged.config.use_cache = True  # a training run may have turned it off (gradient checkpointing)

    provenance: dict[str, Any] = {
        "merged_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),  # two merges: two records
        "merged_dir": str(target),
        "adapter_dir": str(folder),
        "adapter_config_sha256": _sha256(adapter_config),
        "adapter_weights_sha256": adapter_sha,
        "method": summary.get("method"),
        "train_config": summary.get("config"),
        "base_model": ref.as_dict(),
        "base_model_digest": base_digest,
        "base_model_replaced": base is not None,
        "trained_quantization": summary.get("quantization"),
        "merged_dtype": str(getattr(merged, "dtype", "?")).removeprefix("torch."),
        "base_model_merge": chain[0] if chain else None,
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
