"""Shared test helpers.

Integration tests use real components. When one is missing, a developer's run skips
with a message saying what to install; under CI (``CI`` set) it is a failure, never a
skip, because CI is where we prove the real thing works.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from bench.net import free_port
from bench.postgres import PostgresServer, postgres_available, running_postgres

IN_CI = bool(os.environ.get("CI"))


def require(ok: bool, what: str) -> None:
    """Fail (under CI) or skip (elsewhere) when a real component is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"missing component under CI: {what}", pytrace=False)
    pytest.skip(f"missing component: {what}")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"`{name}` on PATH (see .ci/run for how it is installed)")
    assert path is not None
    return path


def require_docker() -> docker.DockerClient:
    """A client of the local Docker engine, which must answer (the caller closes it)."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        require(False, f"a reachable Docker engine ({exc}); see scripts/ensure-docker.sh")
        raise  # unreachable: require() fails or skips
    return client


@pytest.fixture(autouse=True, scope="session")
def _root_edge_temp_base() -> Iterator[None]:
    """A root edge in this test process keeps Nginx's temp dirs in a throwaway folder
    (not /var/cache) that its `nobody` workers can traverse, removed at the end."""
    import tempfile

    from orchestrify.edge import runner

    base = Path(tempfile.mkdtemp(prefix="orchestrify-edge-tmp-"))
    base.chmod(0o755)
    saved = runner.ROOT_TEMP_BASE
    runner.ROOT_TEMP_BASE = base
    yield
    runner.ROOT_TEMP_BASE = saved
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 cluster of this test session's own (see bench/postgres.py); under
    CI a missing PostgreSQL fails, never skips."""
    why = postgres_available()
    require(why is None, why or "")
    with running_postgres(free_port()) as server:
        yield server


STORE_ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=STORE_ENGINES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store (schema at head): SQLite in ``tmp_path`` (as the data dir
    makes it), or the session's PostgreSQL test database, emptied. Tests that take it
    run on both engines."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'orchestrify.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    yield server.url(server.emptied_database())
