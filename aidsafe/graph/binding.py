"""Bind each role and loop agent of a graph to its template, reply kind, JSON Schema and model settings."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..kinds import ReplyKind, get_kind, reply_schema
from ..models import ModelSettings
from ..policies import PolicySet
from ..resources import builtin_dir
from ..templates import RoleTemplate, load_template
from .plan import GraphPlan, plan_graph
from .spec import GraphSpec

__all__ = ["Binding", "bind", "template_path"]


@dataclass(frozen=True)
class Binding:
    """A role (or loop agent) bound to its template, reply kind, schema and model settings."""

    name: str
    """The role name, or the agent name in a loop."""
    role: str
    kind: ReplyKind
    template: RoleTemplate
    schema: dict[str, Any]
    """The JSON Schema of the reply (before any per-call context, e.g. the refiner's thought count)."""
    settings: ModelSettings
    params: dict[str, Any]
    """The role's own template values from the graph file."""

    @property
    def options(self) -> dict[str, Any]:
        """The reply kind's options (``ReplyKind.options``) with the role's ``params`` over their
        defaults, then the role's other params: every value its template gets from the graph file."""
        return {**dict(self.kind.options), **self.params}


def _check_params(role_name: str, params: dict[str, Any], kind: ReplyKind, template: RoleTemplate, path: Path) -> None:
    """A role's ``params``: a setting of its reply kind must have the default's type (a number at
    least 0); a name close to a setting that the template does not use is a typo, refused. Other
    params are plain values (for the template, or shown in pictures)."""
    defaults = dict(kind.options)
    for name, value in params.items():
        where = f"roles.{role_name}.params.{name}"
        if name in defaults:
            default = defaults[name]
            if type(value) is not type(default) and not (type(default) is int and type(value) is float and float(value).is_integer()):
                raise ConfigError(f"{where}: {type(default).__name__} expected (default {default!r}), got {value!r}", file=path)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{where}: must be 0 or more, got {value!r}", file=path)
        elif name not in template.variables and (near := difflib.get_close_matches(name, list(defaults), n=1, cutoff=0.8)):
            raise ConfigError(f"{where}: not a setting of reply kind {kind.name!r} nor a variable of {template.path.name}; did you mean {near[0]!r}?", file=path)


def template_path(graph_path: Path, name: str) -> Path:
    """A role's template: relative to the graph file, else a shipped one."""
    local = (graph_path.parent / name).resolve()
    if local.is_file():
        return local
    shipped = builtin_dir("prompts") / name
    return shipped if shipped.is_file() else local


def bind(
    spec: GraphSpec, path: Path, policies: PolicySet, settings: ModelSettings, role_models: dict[str, str], plan: GraphPlan | None = None
) -> dict[str, Binding]:
    """Bindings keyed as the plan's entries name them (:attr:`~aidsafe.graph.plan.BindingPlan.name`:
    the role of a role node, ``<loop>.<agent>`` for a loop agent), in flow order.

    The model of a binding is, first match wins: ``role_models[agent or role]``, the agent's
    ``model:``, ``role_models[role]``, the role's ``model:``, ``settings.model``. Its reply budget
    is ``settings.max_tokens`` when set, else the role's ``max_tokens:``, else the reply kind's. Its
    ``system_role`` is the role's ``system_role:`` when set, else ``settings.system_role``.
    """
    agent_names = {a.name for n in spec.nodes.values() if n.loop for a in n.loop.agent_list()}
    unknown = set(role_models) - set(spec.roles) - agent_names
    if unknown:
        raise ConfigError(f"--role-model names {', '.join(sorted(unknown))}, which are neither roles nor agents of this graph", file=path)
    templates: dict[str, RoleTemplate] = {}

    def binding(name: str, role_name: str, model_name: str | None) -> Binding:
        role = spec.roles[role_name]
        kind = get_kind(role.reply)
        if role_name not in templates:
            templates[role_name] = load_template(template_path(path, role.template), reply=kind, role=role_name, params=frozenset(role.params))
        _check_params(role_name, role.params, kind, templates[role_name], path)
        chosen = role_models.get(name) or model_name or role_models.get(role_name) or role.model or settings.model
        budget = settings.max_tokens or role.max_tokens or kind.max_tokens
        return Binding(
            name=name,
            role=role_name,
            kind=kind,
            template=templates[role_name],
            schema=reply_schema(kind, policies.ids, {**dict(kind.options), **role.params} if kind.options else None),
            settings=replace(settings.with_model(chosen), max_tokens=budget, system_role=role.system_role or settings.system_role),
            params=dict(role.params),
        )

    bindings: dict[str, Binding] = {}
    for entry in (plan if plan is not None else plan_graph(spec)).bindings():
        assert entry.binding is not None and entry.role is not None
        if entry.loop is None:
            bindings[entry.binding.name] = binding(entry.role, entry.role, None)
        else:
            loop = spec.nodes[entry.loop].loop
            assert loop is not None and entry.agent is not None and entry.index is not None
            bindings[entry.binding.name] = binding(entry.agent, entry.role, loop.agent_list()[entry.index].model)
    return bindings
