"""A write slipped between the queries of a store's read, for the consistency tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from orchestrify.store import Store


def write_during(store: Store, table: str, write: Callable[[], None]) -> list[bool]:
    """Run ``write`` (once) just before ``store`` queries ``table``, i.e. between the
    queries of one of its reads. Returns a list that holds True once it ran."""
    done: list[bool] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not done and f"FROM {table}" in statement:
            done.append(True)
            write()

    event.listen(store.engine, "before_cursor_execute", hook)
    return done
