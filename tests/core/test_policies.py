"""Tests for aidsafe.policies: shipped packs, and malformed packs reported at file:line: field."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidsafe.errors import ConfigError
from aidsafe.policies import PolicySet, load_policy_set
from aidsafe.resources import builtin_dir

SHIPPED = {
    "aidsafe5": [f"P{i}" for i in range(1, 6)],
    "llamaguard3": [f"S{i}" for i in range(1, 15)],
}

HEADER = 'schema: aidsafe.policies/v1\nname: test\nversion: "1.0"\n'


def _write(tmp_path: Path, text: str, name: str = "pack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path | str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_policy_set(path)
    return info.value


# --- shipped packs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_pack_loads_by_name(name: str) -> None:
    pack = load_policy_set(name)
    assert isinstance(pack, PolicySet)
    assert pack.name == name
    assert pack.version.strip()
    assert pack.ids == SHIPPED[name]
    for policy in pack.policies:
        assert policy.title.strip()
        assert len(policy.text.strip()) > 40


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_pack_loads_by_path_equal_to_by_name(name: str) -> None:
    path = builtin_dir("policies") / f"{name}.yaml"
    assert path.is_file()
    by_path = load_policy_set(path)
    assert by_path == load_policy_set(name)
    # a path given as text works too
    assert load_policy_set(str(path)).ids == SHIPPED[name]


def test_ref_is_name_and_version() -> None:
    pack = load_policy_set("aidsafe5")
    assert pack.ref() == {"name": "aidsafe5", "version": pack.version}
    assert load_policy_set("llamaguard3").ref()["name"] == "llamaguard3"


def test_copied_pack_loads_from_tmp_path(tmp_path: Path) -> None:
    text = (builtin_dir("policies") / "llamaguard3.yaml").read_text(encoding="utf-8")
    path = _write(tmp_path, text.replace("name: llamaguard3", "name: mine"), "mine.yaml")
    pack = load_policy_set(path)
    assert pack.name == "mine"
    assert pack.ids == SHIPPED["llamaguard3"]


def test_numeric_version_is_text(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER.replace('"1.0"', "2") + "policies:\n  - id: A\n    title: a\n    text: a\n")
    assert load_policy_set(path).version == "2"


def test_unquoted_float_version_is_not_silently_changed(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER.replace('"1.0"', "1.10") + "policies:\n  - id: A\n    title: a\n    text: a\n")
    try:
        version = load_policy_set(path).version
    except ConfigError as exc:  # rejecting it (pointing at the line) would be fine too
        assert exc.line == 3
        return
    assert version == "1.10"


# --- malformed packs --------------------------------------------------------------------


def test_duplicate_id_points_at_second_id(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER
        + "policies:\n"  # 4
        + "  - id: A1\n"  # 5
        + "    title: a\n"  # 6
        + "    text: a\n"  # 7
        + "  - id: A1\n"  # 8
        + "    title: b\n"
        + "    text: b\n",
    )
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 8
    assert err.field == "policies[1].id"
    assert "duplicate" in err.message and "'A1'" in err.message
    assert str(err).startswith(f"{path}:8: policies[1].id: ")


def test_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER + "policies:\n  - id: A1\n    titel: a\n    text: a\n",  # titel on line 6
    )
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 6
    assert err.field == "policies[0].titel"
    assert "did you mean 'title'" in err.message


def test_missing_text_names_the_item(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER
        + "policies:\n"  # 4
        + "  - id: A1\n"  # 5
        + "    title: a\n"
        + "    text: a\n"
        + "  - id: A2\n"  # 8
        + "    title: b\n",
    )
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 8
    assert err.field == "policies[1].text"
    assert "'text'" in err.message and "missing" in err.message


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER + "policies:\n  - id: A1\n    title: a: b\n    text: a\n",  # bad mapping on line 6
    )
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 6
    assert "invalid YAML" in err.message


def test_wrong_schema_value(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER.replace("policies/v1", "policies/v7") + "policies:\n  - id: A\n    title: a\n    text: a\n")
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 1
    assert err.field == "schema"
    assert "aidsafe.policies/v1" in err.message


def test_empty_policies_list(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "description: none\npolicies: []\n")
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 5
    assert err.field == "policies"


def test_id_with_spaces(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER + "policies:\n  - id: A1\n    title: a\n    text: a\n  - id: bad id\n    title: b\n    text: b\n",
    )
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 8
    assert err.field == "policies[1].id"
    assert "'bad id'" in err.message


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- id: A1\n  title: a\n  text: a\n")
    err = _error(path)
    assert err.file == str(path)
    assert err.line == 1
    assert "mapping" in err.message


def test_unknown_pack_name_lists_available() -> None:
    err = _error("no_such_pack")
    assert "no_such_pack" in err.message
    assert "aidsafe5" in err.message and "llamaguard3" in err.message


def test_unknown_pack_name_message_is_spelt_right() -> None:
    err = _error("no_such_pack")
    assert "no shipped policy pack named" in err.message


def test_missing_pack_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    err = _error(path)
    assert err.file == str(path)
    assert "not found" in err.message
