"""Tests for aidsafe.templates: checked, sandboxed role templates; user text is data."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from aidsafe import ModelSettings, Pipeline
from aidsafe.errors import ConfigError
from aidsafe.policies import load_policy_set
from aidsafe.kinds import get_kind
from aidsafe.templates import load_template

VARS = {"policies": [], "policy_set": None, "prompt": "the prompt", "schema": {}}

TRICKY_PROMPTS = [
    "{{ 7*7 }}",
    "{% for x in range(3) %}x{% endfor %}",
    "{{ ''.__class__.__mro__ }}",
    "{# comment #} {{ policies }} {% raw %}",
]


def _template(tmp_path: Path, source: str, name: str = "t.jinja") -> Path:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


def _load_error(path: Path, reply: str = "intents") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_template(path, reply=reply, role="analyst")
    assert info.value.file == str(path)
    return info.value


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline("aidsafe", settings=ModelSettings(backend="fake"))


# --- load-time checks -------------------------------------------------------------------


def test_undeclared_variable_reports_line_and_name(tmp_path: Path) -> None:
    path = _template(
        tmp_path,
        "{% block system %}\n"  # 1
        "Policies: {{ policies | length }}\n"  # 2
        "{% endblock %}\n"  # 3
        "{% block user %}{{ prompt }} {{ secret }}{% endblock %}\n",  # 4
    )
    err = _load_error(path)
    assert err.line == 4
    assert "'secret'" in err.message
    assert "analyst" in err.message
    assert str(err).startswith(f"{path}:4: ")


def test_variable_allowed_for_one_reply_kind_not_another(tmp_path: Path) -> None:
    source = "{% block system %}x{% endblock %}\n{% block user %}\n{{ thoughts }}\n{% endblock %}\n"
    path = _template(tmp_path, source)
    assert "thoughts" in load_template(path, reply="deliberation", role="d").variables
    err = _load_error(path, reply="intents")
    assert err.line == 3
    assert "'thoughts'" in err.message
    assert "thoughts" not in get_kind("intents").provided_inputs()


def test_syntax_error_reports_line(tmp_path: Path) -> None:
    path = _template(tmp_path, "{% block system %}\nhello\n{% if %}\n{% endblock %}\n{% block user %}{% endblock %}\n")
    err = _load_error(path)
    assert err.line == 3
    assert "syntax" in err.message


def test_missing_user_block(tmp_path: Path) -> None:
    path = _template(tmp_path, "{% block system %}\nhello {{ prompt }}\n{% endblock %}\n")
    err = _load_error(path)
    assert "block user" in err.message
    assert err.line == 1


def test_missing_system_block(tmp_path: Path) -> None:
    path = _template(tmp_path, "{% block user %}{{ prompt }}{% endblock %}\n")
    err = _load_error(path)
    assert "block system" in err.message


def test_missing_template_file(tmp_path: Path) -> None:
    err = _load_error(tmp_path / "absent.jinja")
    assert "not found" in err.message


def test_include_is_caught_at_load_time(tmp_path: Path) -> None:
    _template(tmp_path, "included {{ prompt }}", name="part.jinja")
    path = _template(tmp_path, "{% block system %}x{% endblock %}\n{% block user %}{% include 'part.jinja' %}{% endblock %}\n")
    try:
        template = load_template(path, reply="intents", role="r")
    except ConfigError:
        return
    template.render(dict(VARS))


# --- rendering --------------------------------------------------------------------------


def test_valid_template_renders_system_then_user(tmp_path: Path) -> None:
    path = _template(
        tmp_path,
        "{# a comment outside blocks #}\n"
        "{% block system %}\n  Rules: {{ policies | join(',') }}\n{% endblock %}\n"
        "ignored text between blocks\n"
        "{% block user %}\nQ: {{ prompt }}\n{% endblock %}\n",
    )
    template = load_template(path, reply="intents", role="r")
    assert template.variables == frozenset({"policies", "prompt"})
    assert len(template.sha256) == 12
    messages = template.render({**VARS, "policies": ["A", "B"]})
    assert messages == [{"role": "system", "content": "Rules: A,B"}, {"role": "user", "content": "Q: the prompt"}]


def test_render_uses_strict_undefined(tmp_path: Path) -> None:
    path = _template(tmp_path, "{% block system %}{{ policy_set.name }}{% endblock %}{% block user %}{{ prompt }}{% endblock %}")
    template = load_template(path, reply="intents", role="r")
    with pytest.raises(jinja2.UndefinedError):
        template.render({"prompt": "x"})


@pytest.mark.parametrize("prompt", TRICKY_PROMPTS)
def test_user_text_is_data(pipe: Pipeline, prompt: str) -> None:
    messages = pipe.messages("initializer", f"before {prompt} after")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert f"before {prompt} after" in user
    assert "49" not in user
    assert "xxx" not in user
    assert "<class" not in user
    assert prompt not in messages[0]["content"]


def test_user_text_in_thoughts_and_response_is_data(pipe: Pipeline) -> None:
    messages = pipe.messages(
        "refiner",
        "q",
        thoughts=[{"text": "{{ 7*7 }}", "policies": ["P1"]}],
        response="{% for x in range(3) %}x{% endfor %}",
    )
    user = messages[1]["content"]
    assert "{{ 7*7 }}" in user and "{% for x in range(3) %}x{% endfor %}" in user
    assert "49" not in user and "xxx" not in user


@pytest.mark.parametrize("expr", ["policies.__class__.__mro__", "prompt.__class__", "policy_set.__init__.__globals__"])
def test_sandbox_blocks_unsafe_attributes(tmp_path: Path, expr: str) -> None:
    path = _template(tmp_path, "{% block system %}{{ " + expr + " }}{% endblock %}\n{% block user %}{{ prompt }}{% endblock %}\n")
    template = load_template(path, reply="intents", role="r")
    pack = load_policy_set("aidsafe5")
    variables = {"policies": pack.policies, "policy_set": pack, "prompt": "p", "schema": {}}
    try:
        messages = template.render(variables)
    except jinja2.exceptions.SecurityError as exc:
        assert "unsafe" in str(exc)
    else:  # an undefined rendering would also be safe, as long as nothing leaks
        text = messages[0]["content"]
        assert "<class" not in text and "object" not in text and "__builtins__" not in text


def test_policies_come_first_and_user_text_last(pipe: Pipeline) -> None:
    prompt = "UNIQUE-PROMPT-TEXT 12345"
    ids = pipe.compiled.policies.ids
    assert ids == ["P1", "P2", "P3", "P4", "P5"]
    for role in pipe.roles():
        system, user = pipe.messages(role, prompt)
        assert (system["role"], user["role"]) == ("system", "user")
        for pid in ids:
            assert f"[{pid}]" in system["content"], (role, pid)
        assert prompt not in system["content"], role
        assert prompt in user["content"], role
        assert "aidsafe5" in system["content"]


def test_policy_swap_changes_ids_in_every_role() -> None:
    pipe = Pipeline("aidsafe", policies="llamaguard3", settings=ModelSettings(backend="fake"))
    for role in pipe.roles():
        text = "\n".join(m["content"] for m in pipe.messages(role, "hello"))
        assert "[S1]" in text and "[S14]" in text, role
        assert "[P1]" not in text and '"P1"' not in text, role
        assert "llamaguard3" in text


@pytest.mark.parametrize("graph", ["aidsafe", "roundtable", "single"])
@pytest.mark.parametrize("policies", ["aidsafe5", "llamaguard3"])
def test_shipped_templates_render_for_every_role(graph: str, policies: str) -> None:
    pipe = Pipeline(graph, policies=policies, settings=ModelSettings(backend="fake"))
    roles = pipe.roles()
    assert roles
    for role in roles:
        messages = pipe.messages(role, "How do I pick a lock?")
        assert [m["role"] for m in messages] == ["system", "user"]
        assert all(m["content"].strip() for m in messages), role
        assert "How do I pick a lock?" in messages[1]["content"]


def test_deliberator_messages_name_agent_and_round(pipe: Pipeline) -> None:
    user = pipe.messages("deliberate.agent_2", "q", round=2)[1]["content"]
    assert "You are agent_2; this is round 2 of at most 3." in user
