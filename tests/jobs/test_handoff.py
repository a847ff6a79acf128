"""What a job is handed: extra vars tagged !unsafe at every depth, and an environment
without the controller's secrets (the real runs are in tests/controller/test_jobs_unsafe.py
and tests/controller/test_job_env.py)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrify.jobs.handoff import job_environment, unsafe_extra_vars_yaml, write_extra_vars

TRICKY = [
    "{{ lookup('pipe', 'id') }}",
    "{% for x in range(3) %}{{ x }}{% endfor %}",
    "multi\nline\n",
    'it\'s "quoted" # not a comment: {a: b}',
    "ünïcødé ☃",
    "",
    "null",
    "123",
    "true",
]


class _Recording(yaml.SafeLoader):
    """Loads !unsafe like Ansible does (the value itself) and counts the tags it saw."""

    seen: list[Any]


def _load(text: str) -> tuple[Any, list[Any]]:
    seen: list[Any] = []

    def unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        assert isinstance(node, yaml.ScalarNode), "the tag goes on each scalar"
        value = loader.construct_scalar(node)
        seen.append(value)
        return value

    loader = type("Loader", (_Recording,), {})
    loader.add_constructor("!unsafe", unsafe)
    return yaml.load(text, Loader=loader), seen  # a SafeLoader subclass


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*_strings(k), *_strings(v)]]
    return []


def test_every_string_at_every_depth_is_tagged_and_round_trips() -> None:
    extra = {
        "payload": TRICKY[0],
        "tricky": TRICKY,
        "nested": {"deeper": {"k": TRICKY[1], TRICKY[0]: [1, 2.5, None, True, {"x": "y"}]}},
        "number": 7,
        "flag": False,
        "nothing": None,
    }
    loaded, seen = _load(unsafe_extra_vars_yaml(extra))
    assert loaded == extra  # nothing lost, scalars keep their types ("123" stays a string)
    assert sorted(seen) == sorted(_strings(extra))  # and every string, key or value, tagged


def test_plain_yaml_loaders_refuse_the_file_so_it_is_never_read_as_trusted() -> None:
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(unsafe_extra_vars_yaml({"payload": "x"}))


def test_extra_vars_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "env" / "extravars"
    path.parent.mkdir()
    path.write_text("old: 1\n")
    path.chmod(0o644)
    write_extra_vars(path, {"who": "me"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _load(path.read_text())[0] == {"who": "me"}


def test_job_environment_keeps_what_ansible_needs_and_drops_the_rest() -> None:
    env = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "SSH_AUTH_SOCK": "/tmp/agent.sock",
        "ANSIBLE_CONFIG": "/etc/ansible.cfg",
        "ANSIBLE_STDOUT_CALLBACK": "awx_display",
        "AWX_ISOLATED_DATA_DIR": "/jobs/1/artifacts/1",
        "RUNNER_OMIT_EVENTS": "False",
        "ORCHESTRIFY_TOKEN": "secret-admin",
        "ORCHESTRIFY_JOIN_TOKEN": "secret-join",
        "AWS_SECRET_ACCESS_KEY": "secret-aws",
        "DATABASE_URL": "postgresql://u:secret@db/x",
    }
    kept = job_environment(env)
    assert set(kept) == {
        "PATH",
        "HOME",
        "LANG",
        "SSH_AUTH_SOCK",
        "ANSIBLE_CONFIG",
        "ANSIBLE_STDOUT_CALLBACK",
        "AWX_ISOLATED_DATA_DIR",
        "RUNNER_OMIT_EVENTS",
    }
    assert not any("secret" in value for value in kept.values())
