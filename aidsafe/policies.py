"""Safety policy packs: versioned, swappable data files whose ids thoughts cite."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ._yaml import load_yaml_model
from .errors import ConfigError
from .resources import resolve

__all__ = ["Policy", "PolicySet", "load_policy_set"]

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")


class Policy(BaseModel):
    """One policy of a pack."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    """Stable id that thoughts cite, e.g. ``P1`` or ``S9``."""
    title: str = Field(min_length=1)
    """Short name shown next to the id."""
    text: str = Field(min_length=1)
    """The policy itself: what to refuse, what to still help with, how to treat borderline cases."""

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"policy id {value!r} must start with a letter and use letters, digits, '_', '.' or '-' (max 32)")
        return value


class PolicySet(BaseModel):
    """A named, versioned pack of policies (a file in ``policies/``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["aidsafe.policies/v1"] = Field(alias="schema")
    """Format version of the file."""
    name: str = Field(min_length=1)
    """Pack name, recorded in every output record."""
    version: str = Field(min_length=1)
    """Pack version (a string, e.g. ``"1.0"``), recorded in every output record."""
    description: str = ""
    """What the pack is for."""
    policies: list[Policy] = Field(min_length=1)
    """The policies, in the order they are shown to the model."""

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        if isinstance(value, float):  # YAML reads 1.10 as 1.1: refuse to guess
            raise ValueError(f"write the version as a quoted string (YAML read {value!r} as a number), e.g. version: \"1.0\"")
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("policies")
    @classmethod
    def _unique_ids(cls, policies: list[Policy]) -> list[Policy]:
        first: dict[str, int] = {}
        for index, policy in enumerate(policies):
            if policy.id in first:
                message = f"duplicate policy id {policy.id!r} (first used by item {first[policy.id]})"
                raise PydanticCustomError("duplicate_id", "{message}", {"message": message, "at": (index, "id")})
            first[policy.id] = index
        return policies

    @property
    def ids(self) -> list[str]:
        """Policy ids in pack order."""
        return [p.id for p in self.policies]

    def ref(self) -> dict[str, str]:
        """``{"name", "version"}`` as written into output records."""
        return {"name": self.name, "version": self.version}


def load_policy_set(name_or_path: str | Path) -> PolicySet:
    """Load a shipped pack by name (``aidsafe5``, ``llamaguard3``) or any pack file by path.

    A malformed pack raises :class:`~aidsafe.errors.ConfigError` naming the file, line and field.
    """
    try:
        path = resolve("policies", name_or_path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    pack = load_yaml_model(path, PolicySet, kind="policy pack")
    return pack
