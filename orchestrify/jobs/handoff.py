"""What the controller hands to ansible-playbook besides the playbook: the extra vars,
as data Ansible will never template, and a small environment without the controller's
secrets.

Extra vars come from ``POST /v1/jobs`` and from alert labels (``run_playbook`` rules).
Ansible templates every string it is given unless that string is marked unsafe, so a
value such as ``{{ lookup('pipe', 'id') }}`` would run a command on the controller. The
vars are therefore written as YAML with Ansible's own ``!unsafe`` tag on every string,
at any depth (keys included): Ansible's loader turns each into an unsafe value (in
ansible-core 2.19, a string not trusted as a template), which playbooks read as plain
text. The tag has meant this since Ansible 2.0, so it does not depend on the version.

ansible-runner starts each run from a copy of ``os.environ`` and writes that copy into
the job's artifacts (``artifacts/<job>/command``); :func:`job_environment` keeps only
what Ansible needs, by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["INHERITED_ENV", "job_environment", "unsafe_extra_vars_yaml", "write_extra_vars"]

UNSAFE_TAG = "!unsafe"

# Taken from the controller's environment when set: where programs are (ansible-playbook,
# ssh), whose home holds ~/.ssh and ~/.ansible, the locale Ansible insists on, and the
# SSH agent that may hold the keys to the hosts. ANSIBLE_* is the operator's Ansible
# configuration. Nothing else: ORCHESTRIFY_TOKEN, ORCHESTRIFY_JOIN_TOKEN and whatever
# else the controller was started with stay out of the job and of its artifacts.
INHERITED_ENV = frozenset(
    {
        "HOME",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "LOGNAME",
        "PATH",
        "PYTHONPATH",
        "SSH_AUTH_SOCK",
        "TMPDIR",
        "TZ",
        "USER",
        "VIRTUAL_ENV",
    }
)
INHERITED_ENV_PREFIX = "ANSIBLE_"
# Set by ansible-runner itself for its event callback (awx_display), which reads them.
RUNNER_ENV = frozenset(
    {
        "AD_HOC_COMMAND_ID",
        "AWX_ISOLATED_DATA_DIR",
        "ORIGINAL_STDOUT_CALLBACK",
        "RUNNER_OMIT_EVENTS",
        "RUNNER_ONLY_FAILED_EVENTS",
    }
)


class _UnsafeDumper(yaml.SafeDumper):
    """A YAML dumper that writes every string, key or value, tagged ``!unsafe``."""


def _represent_unsafe(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(UNSAFE_TAG, value)


_UnsafeDumper.add_representer(str, _represent_unsafe)


def unsafe_extra_vars_yaml(extra_vars: Mapping[str, Any]) -> str:
    """Extra vars as a YAML document whose every string carries ``!unsafe``.

    Ansible's documentation asks for the tag on each element of a list or dict rather
    than on the container, which is what this does. Numbers, booleans and null keep
    their types (a template can only hide in a string).
    """
    return yaml.dump(
        dict(extra_vars),
        Dumper=_UnsafeDumper,
        default_flow_style=False,
        sort_keys=False,
        width=1 << 20,  # never fold a long value across lines
    )


def write_extra_vars(path: Path, extra_vars: Mapping[str, Any]) -> Path:
    """Write ``env/extravars`` (0600) for ansible-runner, which passes it as ``-e @file``.

    A file rather than the command line: the values are not in ``ps`` either.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(unsafe_extra_vars_yaml(extra_vars))
    os.chmod(path, 0o600)  # in case it existed with a wider mode
    return path


def job_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` a job may see: :data:`INHERITED_ENV`, ``ANSIBLE_*`` and
    the variables ansible-runner sets for its callback. Everything else is dropped."""
    return {
        key: value
        for key, value in env.items()
        if key in INHERITED_ENV or key in RUNNER_ENV or key.startswith(INHERITED_ENV_PREFIX)
    }
