"""The data dir is private: 0700, with the SQLite store, its WAL journal and the token
files 0600, whatever the umask; a data dir an older build left open is tightened at
start, and the log says so."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings, load_or_create_token
from orchestrify.store import Store
from orchestrify.store.files import secure_data_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """The usual umask, under which plain mkdir/open/SQLite make 0755 dirs, 0644 files."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _write_something(store: Store) -> None:
    store.record_event("hello", kind="test")


def test_a_new_data_dir_is_private(tmp_path: Path) -> None:
    data = tmp_path / "state" / "orchestrify"
    store = Store.in_data_dir(data)
    try:
        _write_something(store)
        db = data / "orchestrify.db"
        journal = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
        assert all(p.exists() for p in journal)  # WAL mode: the journal is there to check
        assert mode(data) == 0o700
        assert {p.name: mode(p) for p in [db, *journal]} == {p.name: 0o600 for p in [db, *journal]}
    finally:
        store.close()
    _token, new = load_or_create_token(data, "admin", None)
    assert new and mode(data / "admin.token") == 0o600


def test_tokens_in_a_new_dir_are_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    load_or_create_token(data, "join", None)
    assert mode(data) == 0o700
    assert mode(data / "join.token") == 0o600


def _old_build_data_dir(data: Path) -> list[Path]:
    """What a previous build left: the dir 0755, the store and its journal 0644 (SQLite
    under umask 022), the tokens readable by all."""
    data.mkdir(parents=True)
    os.chmod(data, 0o755)
    old = Store(f"sqlite:///{data / 'orchestrify.db'}")
    _write_something(old)
    files = [data / n for n in ("orchestrify.db", "orchestrify.db-wal", "orchestrify.db-shm")]
    for path in files:
        assert mode(path) == 0o644, path
    old.close()
    # SQLite removes the journal when the last connection closes; a crash leaves it.
    for name in ("admin.token", "join.token"):
        (data / name).write_text("some-token\n")
        os.chmod(data / name, 0o644)
    for name in ("orchestrify.db-wal", "orchestrify.db-shm"):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    return [data, *files, data / "admin.token", data / "join.token"]


def test_an_old_open_data_dir_is_tightened_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    left = _old_build_data_dir(data)
    with caplog.at_level(logging.INFO, logger="orchestrify.store.files"):
        tightened = secure_data_dir(data)
    assert sorted(tightened) == sorted(left)
    assert mode(data) == 0o700
    for path in left[1:]:
        assert mode(path) == 0o600, path
    (record,) = [r for r in caplog.records if "tightened" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert sorted(record.paths) == sorted(str(p) for p in left)  # type: ignore[attr-defined]

    caplog.clear()
    assert secure_data_dir(data) == []  # the second start has nothing to say
    assert not [r for r in caplog.records if "tightened" in r.getMessage()]


def test_the_controller_tightens_its_data_dir_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    _old_build_data_dir(data)
    settings = ControllerSettings(data_dir=data, token="t", join_token="j", playbook_dir=None)
    app = create_app(settings, registry=CollectorRegistry(), run_reconciler=False)
    with caplog.at_level(logging.INFO), TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert mode(data) == 0o700
        for name in ("orchestrify.db", "orchestrify.db-wal", "orchestrify.db-shm", "admin.token"):
            assert mode(data / name) == 0o600, name
        assert mode(settings.resolved_jobs_dir) == 0o700
    assert any("tightened permissions" in r.getMessage() for r in caplog.records)


def test_a_symlinked_file_in_the_data_dir_is_left_alone(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.token"
    outside.write_text("x\n")
    os.chmod(outside, 0o644)
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").symlink_to(outside)
    secure_data_dir(data)
    assert mode(outside) == 0o644  # not ours: a link is never followed
