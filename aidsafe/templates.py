"""Role prompt templates: Jinja files with a ``system`` and a ``user`` block, rendered in a sandbox.

User text (prompts, model replies) is only ever passed as data: it is never parsed as template
code, so ``{{ 7*7 }}`` in a prompt reaches the model verbatim. Templates use
``StrictUndefined``; their variables are checked at load time against the inputs that the role's
reply kind declares (:mod:`aidsafe.kinds`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ConfigError
from .kinds import ReplyKind, get_kind

__all__ = ["BLOCKS", "COPY_WORDS", "MIN_COPY", "TURN_BLOCKS", "RoleTemplate", "load_rubric", "load_template", "normalize", "word_runs", "words"]

BLOCKS = ("system", "user")
"""The blocks every role template defines: one system and one user message."""
TURN_BLOCKS = ("assistant", "continue")
"""Optional blocks: when ``assistant`` renders non-empty, it is sent as an assistant message after
the user message (words put in the model's mouth, e.g. the ear-whisperer's belief), followed by
``continue`` as a last user message."""
MIN_COPY = 20
"""Characters a reply string must have before it can count as a copied piece of a template line."""
COPY_WORDS = 8
"""A run of this many words of one template line inside a reply string is copying, not answering."""
_WORD = re.compile(r"[a-z0-9']+")


def normalize(text: str) -> str:
    """Lower case, one space between words, no quotes, brackets or punctuation at either end."""
    return " ".join(text.lower().split()).strip(" \"'<>[]().,;:!?-*`")


def words(text: str) -> list[str]:
    """The words of ``text``, lower case, punctuation dropped."""
    return _WORD.findall(text.lower())


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["json"] = _json
    return env


_ENV = _environment()


@dataclass(frozen=True, eq=False)
class RoleTemplate:
    """A loaded, checked template file."""

    path: Path
    source: str
    sha256: str
    variables: frozenset[str]
    instructions: tuple[str, ...] = ()
    """The template's own text, line by line, normalised (:func:`normalize`), the lines of at least
    :data:`MIN_COPY` characters: a reply that copies one of them as content is invalid."""
    runs: frozenset[tuple[str, ...]] = frozenset()
    """Every run of :data:`COPY_WORDS` words in one line of the template's own text."""

    @functools.cached_property
    def _compiled(self) -> Template:
        return _ENV.from_string(self.source)

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """Render the chat messages, built structurally: system, user, and - when the template has
        an ``assistant`` block that renders non-empty - assistant and a last user message."""
        template = self._compiled  # compiled once per template, not per call
        context = template.new_context(variables)

        def block(name: str) -> str:
            return "".join(template.blocks[name](context)).strip() if name in template.blocks else ""

        messages = [{"role": name, "content": block(name)} for name in BLOCKS]
        prefix = block("assistant")
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
            messages.append({"role": "user", "content": block("continue") or "Continue."})
        return messages


def _first_line_of(ast: nodes.Template, name: str) -> int | None:
    for node in ast.find_all(nodes.Name):
        if node.name == name and node.ctx == "load":
            return node.lineno
    return None


def load_template(path: Path, *, reply: str | ReplyKind, role: str, params: frozenset[str] = frozenset()) -> RoleTemplate:
    """Load and check a template for a role whose reply kind is ``reply`` (``params``: the names of
    the role's own values from the graph file, usable as variables too).

    Raises :class:`ConfigError` with the template file and line on a syntax error, a missing
    ``system``/``user`` block, or a variable the role does not provide.
    """
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"template of role {role!r} not found", file=path) from None
    try:
        ast = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"template syntax error: {exc.message}", file=path, line=exc.lineno) from None
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        raise ConfigError(
            f"{type(node).__name__.lower()} is not supported: a role template is one self-contained file",
            file=path,
            line=node.lineno,
        )
    blocks = {b.name for b in ast.find_all(nodes.Block)}
    for block in BLOCKS:
        if block not in blocks:
            raise ConfigError(
                f"template must define {{% block {block} %}} (it has: {', '.join(sorted(blocks)) or 'no blocks'})",
                file=path,
                line=1,
            )
    used = frozenset(meta.find_undeclared_variables(ast))
    kind = get_kind(reply)
    allowed = kind.provided_inputs() | params
    unknown = sorted(used - allowed)
    if unknown:
        name = unknown[0]
        raise ConfigError(
            f"undefined variable {name!r} for role {role!r} (reply {kind.name!r}); available: {', '.join(sorted(allowed))}",
            file=path,
            line=_first_line_of(ast, name),
        )
    lines = [line for data in ast.find_all(nodes.TemplateData) for line in data.data.splitlines()]
    instructions = tuple(dict.fromkeys(text for text in map(normalize, lines) if len(text) >= MIN_COPY))
    runs = frozenset(run for line in lines for run in word_runs(words(line)))
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return RoleTemplate(path=path, source=source, sha256=digest, variables=used, instructions=instructions, runs=runs)


def word_runs(tokens: list[str], size: int = COPY_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``size`` consecutive words."""
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def load_rubric(name_or_path: str | Path, kind: str, role: str) -> RoleTemplate:
    """A grader's rubric: a template file, else one shipped in ``prompts/`` by that name."""
    from .resources import builtin_dir

    path = Path(name_or_path)
    if not path.is_file():
        shipped = builtin_dir("prompts") / str(name_or_path)
        if not shipped.is_file():
            raise ConfigError(f"rubric template {str(name_or_path)!r} not found (neither a file nor a shipped template)")
        path = shipped
    return load_template(path, reply=kind, role=role)
