"""Database errors never leave the store as SQLAlchemy types: a constraint is a Conflict,
a store that cannot write is StoreUnavailable, a value it cannot hold is InvalidSpec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from orchestrify.errors import Conflict, InvalidSpec, StoreUnavailable, WriteConflict
from orchestrify.models import NodeRegistration
from orchestrify.store import Store, translate_store_error
from orchestrify.store.engine import WRITE_ATTEMPTS, retry_on_race
from orchestrify.store.tables import NodeRow


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    s = Store.open(store_url, data_dir=tmp_path)
    yield s
    s.close()


def test_a_constraint_hit_inside_a_write_is_a_conflict(store: Store) -> None:
    a, _ = store.register_node(NodeRegistration(name="a", address="10.0.0.1"))
    with pytest.raises(Conflict), store.write() as tx:
        tx.session.add(NodeRow(id="other", name="a", address="x", replica_count=0))
        tx.session.flush()  # raised here, inside the block, not at commit
    with store.read() as s:
        assert [r.id for r in s.scalars(select(NodeRow)).all()] == [a.id]


def test_a_locked_store_is_unavailable_for_writes_and_reads(store: Store) -> None:
    def locked(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        raise store.engine.dialect.dbapi.OperationalError("database is locked")

    event.listen(store.engine, "before_cursor_execute", locked)
    try:
        with pytest.raises(StoreUnavailable, match="database is locked"):
            store.register_node(NodeRegistration(name="a", address="10.0.0.1"))
        with pytest.raises(StoreUnavailable):
            store.list_nodes()
    finally:
        event.remove(store.engine, "before_cursor_execute", locked)
    assert store.list_nodes() == []


def test_a_text_the_store_cannot_hold_is_invalid_not_a_crash(store: Store) -> None:
    with pytest.raises(InvalidSpec, match="not valid Unicode"):
        store.record_event("lone \udfff", kind="config")
    assert store.list_events() == []


@pytest.mark.parametrize(
    "orig", [psycopg.errors.SerializationFailure("x"), psycopg.errors.DeadlockDetected("x")]
)
def test_a_postgresql_race_is_a_write_conflict_and_is_retried(orig: Exception) -> None:
    raced = OperationalError("UPDATE services ...", {}, orig)
    translated = translate_store_error(raced)
    assert isinstance(translated, WriteConflict)
    assert isinstance(translated, StoreUnavailable)  # 503 and Retry-After: clients retry
    calls: list[int] = []

    @retry_on_race
    def write(fail_times: int) -> str:
        calls.append(1)
        if len(calls) <= fail_times:
            raise WriteConflict("raced")
        return "done"

    assert write(2) == "done" and len(calls) == 3  # rolled back twice, then committed
    calls.clear()
    with pytest.raises(WriteConflict):
        write(99)
    assert len(calls) == WRITE_ATTEMPTS


def test_a_lost_postgresql_connection_is_unavailable() -> None:
    lost = OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed"))
    assert isinstance(translate_store_error(lost), StoreUnavailable)
