"""Load YAML config files safely and map validation errors back to ``file:line``."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

__all__ = ["check_schema_version", "load_yaml_model"]

M = TypeVar("M", bound=BaseModel)


def _node_at(root: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """Walk the composed YAML node tree along a pydantic error location."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    node = value
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
            else:
                return node
        else:
            return node
    return node


def _key_node(root: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node | None:
    """The key node of the last mapping key in ``loc`` (for 'extra field' errors)."""
    if not loc:
        return None
    parent = _node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key, _ in parent.value:
            if key.value == loc[-1]:
                return key
    return None


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml_model(path: Path, model: type[M], *, kind: str) -> M:
    """Parse ``path`` as YAML (``safe_load`` semantics) and validate it as ``model``.

    Raises :class:`ConfigError` with the file, the line and the dotted field at fault,
    and a did-you-mean hint for a misspelt key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{kind} file not found", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", file=path) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem}", file=path, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=path) from None
    if root is None or not isinstance(data, dict):
        raise ConfigError(f"a {kind} file must be a YAML mapping", file=path, line=1)
    try:
        return model.model_validate(data, context={"file": path})
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt key shows up as 'extra' plus 'missing': report the misspelling first
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(err["loc"])
        # a validator may point below its own field with ctx["at"] (e.g. the duplicate item)
        loc += tuple(err.get("ctx", {}).get("at", ()))
        # pydantic puts the tagged-union tag / validator name into loc; drop parts not in the data
        node = _node_at(root, loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            key = _key_node(root, loc)
            if key is not None:
                node = key
            allowed = _allowed_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            message = f"unknown key {loc[-1]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            if allowed:
                message += f" (allowed: {', '.join(sorted(allowed))})"
        elif err["type"] == "missing":
            message = f"required field {str(loc[-1])!r} is missing"
            loc_parent = loc[:-1]
            node = _node_at(root, loc_parent)
        line = node.start_mark.line + 1
        more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
        raise ConfigError(message + more, file=path, line=line, field=_dotted(loc)) from None


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the (sub)model that ``loc`` points into, following lists and dicts."""
    current: Any = model
    parts = list(loc)
    while parts:
        current = _unwrap_optional(current)
        origin = get_origin(current)
        if origin in (list, dict):
            parts.pop(0)  # a list index or a dict key (e.g. a node id)
            current = get_args(current)[-1]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(parts.pop(0)))
            if field is None:
                return []
            current = field.annotation
        else:
            return []
    current = _unwrap_optional(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap_optional(ann: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(ann) in (Union, UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def check_schema_version(value: str, schema: str) -> str:
    """A file's ``schema:`` field checked against this version's ``schema`` (``aidsafe.KIND/vN``):
    the same kind, and a version no newer than the one this aidsafe reads."""
    kind, _, _ = schema.rpartition("/v")
    match = re.fullmatch(re.escape(kind) + r"/v(\d+)", value)
    if not match:
        raise ValueError(f"expected {schema!r}, got {value!r}")
    if int(match.group(1)) > int(schema.rpartition("/v")[2]):
        raise ValueError(f"this file is {value!r}, written for a newer aidsafe; this version reads {schema!r}")
    return value
