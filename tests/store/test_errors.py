"""Database errors never leave the store as SQLAlchemy types: a constraint is a Conflict,
a store that cannot write is StoreUnavailable, a value it cannot hold is InvalidSpec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from orchestrify.errors import Conflict, InvalidSpec, StoreUnavailable
from orchestrify.models import NodeRegistration
from orchestrify.store import Store
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
