"""Fixtures shared by the controller's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings


@pytest.fixture
def api(tmp_path: Path, store_url: str) -> Iterator[TestClient]:
    """An app without its reconciler loop, on ``store_url``: admin token ``admin-token``,
    join token ``join-token``, long-polls of at most 5 s."""
    settings = ControllerSettings(
        data_dir=tmp_path,
        database_url=store_url,
        token="admin-token",
        join_token="join-token",
        watch_timeout_s=5,
    )
    app = create_app(settings, registry=CollectorRegistry(), run_reconciler=False)
    with TestClient(app) as client:
        yield client
