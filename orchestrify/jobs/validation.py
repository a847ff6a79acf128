"""Checks on what a job may run: nothing here reaches a shell, but every field is still
held to a narrow shape so that a playbook path cannot leave the playbook directory, a
limit cannot smuggle options or files (``@file``), and extra vars stay plain data.

Pure functions raising :class:`~orchestrify.errors.InvalidSpec` with the field named.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrify.errors import InvalidSpec

EXTRA_VAR_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# One element of a host pattern: a host, group, wildcard or range (web*, host[1:3]).
_ELEMENT = r"[!&]?[A-Za-z0-9_*][A-Za-z0-9_.*\-]*(?:\[[0-9a-z]+:[0-9a-z]+\])?[A-Za-z0-9_.*\-]*"
LIMIT_PATTERN = re.compile(rf"^{_ELEMENT}(?:[,:]{_ELEMENT})*$")
# Extra vars win over every other variable. ``ansible_*`` ones pick the connection, the
# interpreter and the become command, so a value there runs commands of its choosing;
# the magic variables are Ansible's own. Alert labels become extra vars: keep them out.
RESERVED_EXTRA_VAR_PREFIX = "ansible_"
RESERVED_EXTRA_VARS = frozenset(
    {
        "environment",
        "group_names",
        "groups",
        "hostvars",
        "inventory_dir",
        "inventory_file",
        "inventory_hostname",
        "inventory_hostname_short",
        "omit",
        "play_hosts",
        "playbook_dir",
        "role_path",
        "vars",
    }
)
# A playbook path relative to the playbook directory: components that start with a
# letter, digit or '_' (so never '..', never hidden), ending in .yml or .yaml.
_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
PLAYBOOK_PATTERN = re.compile(rf"^(\./)?({_COMPONENT}/)*{_COMPONENT}\.(yml|yaml)$")
MAX_PLAYBOOK_LEN = 255
MAX_LIMIT_LEN = 2048
MAX_EXTRA_VARS_BYTES = 64 * 1024
PLAYBOOK_SUFFIXES = (".yml", ".yaml")


def resolve_playbook(playbook_dir: Path, playbook: str) -> Path:
    """The playbook's real path, proven to be a file inside ``playbook_dir``."""
    if not playbook or "\x00" in playbook:
        raise InvalidSpec("playbook: give a file name such as workers.yml", field="playbook")
    rel = PurePosixPath(playbook)
    if rel.is_absolute() or playbook.startswith("~"):
        raise InvalidSpec(
            f"playbook: {playbook!r} must be relative to the playbook directory",
            field="playbook",
        )
    if ".." in rel.parts:
        raise InvalidSpec(f"playbook: {playbook!r} must not contain '..'", field="playbook")
    if rel.suffix not in PLAYBOOK_SUFFIXES:
        raise InvalidSpec(f"playbook: {playbook!r} is not a .yml or .yaml file", field="playbook")
    if len(playbook) > MAX_PLAYBOOK_LEN or not PLAYBOOK_PATTERN.fullmatch(playbook):
        raise InvalidSpec(
            f"playbook: {playbook[:80]!r} is not a playbook path (names of letters, digits, "
            "'_', '.' and '-' separated by '/', not starting with '.')",
            field="playbook",
        )
    root = playbook_dir.resolve()
    target = (root / rel).resolve()  # follows symlinks: a link pointing out is caught here
    if not target.is_relative_to(root):
        raise InvalidSpec(
            f"playbook: {playbook!r} resolves outside the playbook directory", field="playbook"
        )
    if not target.is_file():
        raise InvalidSpec(f"playbook: no playbook {playbook!r} in {root}", field="playbook")
    return target


def check_limit(limit: str | None) -> str | None:
    """An Ansible host pattern made of names, groups, ``,``/``:`` and ``!``/``&`` only."""
    if limit is None:
        return None
    # Taken exactly as the schema states it: no padding, not empty (omit it for all).
    if len(limit) > MAX_LIMIT_LEN or not LIMIT_PATTERN.fullmatch(limit):
        raise InvalidSpec(
            f"limit: {limit[:80]!r} is not a host pattern; use host and group names "
            "separated by ',' or ':', with '!' to exclude and '&' to intersect "
            "(no spaces, no shell characters)",
            field="limit",
        )
    return limit


def list_playbooks(playbook_dir: Path, *, most: int = 500) -> list[str]:
    """The playbooks a job may name: every .yml/.yaml file under ``playbook_dir`` whose
    path ``resolve_playbook`` takes, sorted; at most ``most`` of them (the OpenAPI lists
    them as the ``playbook`` field's ``enum``)."""
    root = playbook_dir.resolve()
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not PLAYBOOK_PATTERN.fullmatch(rel) or len(rel) > MAX_PLAYBOOK_LEN:
            continue
        try:
            resolve_playbook(root, rel)
        except InvalidSpec:
            continue
        found.append(rel)
        if len(found) >= most:
            break
    return found


def check_extra_vars(extra_vars: dict[str, Any]) -> dict[str, Any]:
    """Identifier keys; JSON values (scalars, lists, dicts) only; a bounded size."""
    if not isinstance(extra_vars, dict):
        raise InvalidSpec("extra_vars: must be an object", field="extra_vars")
    for key, value in extra_vars.items():
        if not isinstance(key, str) or not EXTRA_VAR_KEY.match(key):
            raise InvalidSpec(
                f"extra_vars: key {key!r} is not a variable name "
                "(letters, digits and '_', not starting with a digit)",
                field=f"extra_vars.{key}",
            )
        if key.lower().startswith(RESERVED_EXTRA_VAR_PREFIX) or key in RESERVED_EXTRA_VARS:
            raise InvalidSpec(
                f"extra_vars: {key!r} is reserved by Ansible (connection, interpreter and "
                "magic variables cannot be set from a job)",
                field=f"extra_vars.{key}",
            )
        _check_json_value(value, f"extra_vars.{key}")
    size = len(repr(extra_vars).encode())
    if size > MAX_EXTRA_VARS_BYTES:
        raise InvalidSpec(
            f"extra_vars: {size} bytes is more than {MAX_EXTRA_VARS_BYTES}", field="extra_vars"
        )
    return extra_vars


def _check_json_value(value: Any, where: str, depth: int = 0) -> None:
    if depth > 20:
        raise InvalidSpec(f"{where}: nested too deep", field=where)
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSpec(f"{where}: {value} is not a JSON number", field=where)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}.{i}", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InvalidSpec(f"{where}: keys must be strings", field=where)
            _check_json_value(item, f"{where}.{k}", depth + 1)
        return
    raise InvalidSpec(f"{where}: {type(value).__name__} is not a JSON value", field=where)
