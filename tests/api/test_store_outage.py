"""A PostgreSQL store that goes away while the controller runs: the API answers 503 with
Retry-After (the store cannot write), never a traceback or a 500, and the password of
the database URL is in no answer and no log line; once the database is back, the API works again."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.net import free_port
from bench.postgres import PASSWORD, PostgresServer, postgres_available, running_postgres
from orchestrify.controller.app import create_app
from tests.api.conftest import AUTH, settings
from tests.conftest import require


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test's own: it is stopped and started again mid-test."""
    why = postgres_available()
    require(why is None, why or "")
    with running_postgres(free_port()) as server:
        yield server


def test_a_lost_database_is_503_and_the_api_recovers(
    tmp_path: Path, own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = own_postgres.url(own_postgres.new_database())
    app = create_app(settings(tmp_path, database_url=url), run_reconciler=False)
    spec = {"name": "web", "image": "demo:1", "replicas": 0, "min_replicas": 0}
    with TestClient(app, headers=AUTH) as api:
        assert api.post("/v1/services", json=spec).status_code == 201
        own_postgres.stop_server()
        try:
            for resp in (
                api.post("/v1/services", json=spec | {"name": "api"}),
                api.get("/v1/services"),
            ):
                assert resp.status_code == 503, resp.text
                assert resp.headers["retry-after"]
                assert "store" in resp.json()["message"]
                assert PASSWORD not in resp.text
        finally:
            own_postgres.start_server()
        assert [s["name"] for s in api.get("/v1/services").json()] == ["web"]
        assert api.post("/v1/services", json=spec | {"name": "api"}).status_code == 201
    assert "store opened" in caplog.text  # with the URL, its password hidden
    assert PASSWORD not in caplog.text
