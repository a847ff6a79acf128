"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from orchestrify.demo import DEFAULT_TAG, build_demo_image
from tests.conftest import require, require_docker

# The Ansible tests' shared, session-scoped labs (one set-up for all their modules).
from tests.integration.ansible_lab import (
    control_plane,
    lab_workspace,
    worker_fleet,
    worker_fleet_provisioning,
)

__all__ = [
    "control_plane",
    "demo_image",
    "lab_workspace",
    "worker_fleet",
    "worker_fleet_provisioning",
]


@pytest.fixture(scope="session")
def demo_image() -> str:
    """The demo app image, built once per run without a registry (needs the engine)."""
    require_docker().close()
    try:
        build_demo_image()
    except Exception as exc:
        require(False, f"the demo image can be built ({exc})")
    return DEFAULT_TAG
