"""The edge hides its environment (the admin token) from processes of its own user."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")

# In a child, so that the test process itself stays dumpable (debuggers, py-spy).
CHILD = """
from orchestrify.process_privacy import forbid_same_user_inspection, is_dumpable
before = is_dumpable()
done = forbid_same_user_inspection()
print(before, done, is_dumpable())
"""


def test_forbid_same_user_inspection_makes_the_process_non_dumpable() -> None:
    """The kernel's own flag (PR_GET_DUMPABLE) reads 0 afterwards: /proc/PID/environ is
    root's and ptrace is refused to the same user (checked as the edge's user on a
    provisioned host in tests/integration/test_ansible_roles.py)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True", "False"]
