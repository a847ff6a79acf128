"""What a job may run: playbook paths, limit patterns, extra vars (pure, no Ansible)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrify.errors import InvalidSpec
from orchestrify.jobs.validation import check_extra_vars, check_limit, resolve_playbook


@pytest.fixture
def playbook_dir(tmp_path: Path) -> Path:
    root = tmp_path / "playbooks"
    (root / "sub").mkdir(parents=True)
    (root / "site.yml").write_text("- hosts: all\n")
    (root / "sub" / "inner.yaml").write_text("- hosts: all\n")
    (tmp_path / "outside.yml").write_text("- hosts: all\n")
    (root / "escape.yml").symlink_to(tmp_path / "outside.yml")
    (root / "linkdir").symlink_to(tmp_path)
    (root / "alias.yml").symlink_to(root / "site.yml")
    return root


def test_playbook_inside_the_directory_resolves(playbook_dir: Path) -> None:
    assert resolve_playbook(playbook_dir, "site.yml") == (playbook_dir / "site.yml").resolve()
    assert resolve_playbook(playbook_dir, "sub/inner.yaml").name == "inner.yaml"
    assert resolve_playbook(playbook_dir, "./site.yml").name == "site.yml"


def test_symlink_staying_inside_is_allowed(playbook_dir: Path) -> None:
    assert resolve_playbook(playbook_dir, "alias.yml") == (playbook_dir / "site.yml").resolve()


@pytest.mark.parametrize(
    "playbook",
    [
        "../outside.yml",
        "sub/../../outside.yml",
        "/etc/passwd.yml",
        "~/x.yml",
        "escape.yml",  # a symlink pointing out of the directory
        "linkdir/outside.yml",  # a directory symlink pointing out
        "missing.yml",
        "site.txt",
        "sub",
        "",
        "site.yml\x00.yml",
    ],
)
def test_playbook_outside_or_missing_is_rejected_naming_the_field(
    playbook_dir: Path, playbook: str
) -> None:
    with pytest.raises(InvalidSpec) as err:
        resolve_playbook(playbook_dir, playbook)
    assert err.value.field == "playbook"


@pytest.mark.parametrize(
    "limit",
    [
        "host1",
        "host1,host2",
        "workers:!host3",
        "webservers:&staging",
        "!db",
        "web*",
        "host[1:3]",
        "10.0.0.5,lab-1.example.org",
        "all",
    ],
)
def test_host_patterns_are_accepted(limit: str) -> None:
    assert check_limit(limit) == limit


def test_no_limit_is_none_and_an_empty_or_padded_one_is_refused() -> None:
    """The schema states minLength 1 and a pattern without spaces: the code takes
    exactly that (a blank limit used to mean 'every host', wider than the schema)."""
    assert check_limit(None) is None
    for limit in ("", "  ", " web"):
        with pytest.raises(InvalidSpec):
            check_limit(limit)


@pytest.mark.parametrize(
    "limit",
    [
        "all; rm -rf /",
        "host1 host2",
        "$(reboot)",
        "`id`",
        "a|b",
        "a>b",
        "@/etc/passwd",  # ansible reads hosts from a file with @
        "--list-hosts",
        "~regex.*",
        "a,,b",
        "a\nb",
        "x" * 3000,
    ],
)
def test_injection_attempts_in_limit_are_rejected(limit: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        check_limit(limit)
    assert err.value.field == "limit"


def test_extra_vars_with_json_values_pass() -> None:
    value = {"a": 1, "b_2": "x", "_c": [1, {"d": None}], "e": {"f": True, "g": 1.5}}
    assert check_extra_vars(value) == value


@pytest.mark.parametrize("key", ["a b", "1abc", "a-b", "", "a;b", "ä"])
def test_extra_var_keys_must_be_identifiers(key: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        check_extra_vars({key: 1})
    assert err.value.field == f"extra_vars.{key}"


@pytest.mark.parametrize(
    "key",
    ["ansible_ssh_common_args", "ansible_python_interpreter", "ANSIBLE_become_exe", "hostvars"],
)
def test_extra_vars_cannot_override_connection_or_magic_variables(key: str) -> None:
    with pytest.raises(InvalidSpec, match="reserved") as err:
        check_extra_vars({key: "-o ProxyCommand=touch /tmp/pwned"})
    assert err.value.field == f"extra_vars.{key}"


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", float("nan"), {"k": (1, 2)}])
def test_extra_var_values_must_be_json(value: object) -> None:
    with pytest.raises(InvalidSpec) as err:
        check_extra_vars({"a": value})
    assert err.value.field is not None and err.value.field.startswith("extra_vars.a")
