"""Sessions of orchestrify's that a partition left in the middle of a message
(PostgreSQL).

Every write transaction holds a row lock until it commits: the change counter's
(``listen.announce``), and for a leader's fenced writes the lease row's. The server
ends a transaction that waits for its client *between* statements
(``idle_in_transaction_session_timeout``), but not one cut off in the middle of a
message, or of a pipeline before its ``Sync``: that session counts as ``active``, waits
to read from its client (``ClientRead``), and keeps its locks until TCP gives up on the
client, which may be never when something on the way still answers for it (a proxy,
the kernel of a frozen process). Every write of every controller would queue behind
it.

``end_stalled_sessions`` finds such sessions, of orchestrify's (``application_name``),
that have waited on their client for longer than a transaction of orchestrify's ever
does and that hold a lock another session waits for, and ends them
(``pg_terminate_backend``): their transactions roll back, nothing of them lands. Every
controller runs it (``run_forever``), so whichever is blocked frees itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from orchestrify.errors import OrchestrifyError
from orchestrify.store.engine import APPLICATION_NAME, StoreCore

__all__ = ["end_session", "end_stalled_sessions", "run_forever"]

log = logging.getLogger(__name__)

_STALLED = text(
    """
    SELECT a.pid, a.usename,
           extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS waited_s
      FROM pg_stat_activity a
     WHERE a.datname = current_database()
       AND a.pid <> pg_backend_pid()
       AND a.application_name = :application
       AND a.state = 'active'
       AND a.wait_event = 'ClientRead'
       AND a.xact_start IS NOT NULL
       AND a.state_change < clock_timestamp() - make_interval(secs => :after)
       AND a.pid IN (
             SELECT unnest(pg_blocking_pids(w.pid))
               FROM pg_stat_activity w
              WHERE w.datname = current_database() AND w.wait_event_type = 'Lock')
    """
)


def end_stalled_sessions(store: StoreCore, *, after_s: float) -> int:
    """End the sessions of orchestrify's that have waited over ``after_s`` for the rest
    of a message from their client, inside a transaction, while others wait for their
    locks; how many were ended. Sessions of another database role need that role, or
    pg_signal_backend (and pg_read_all_stats to be seen at all); a warning says so."""
    if store.dialect != "postgresql":
        return 0
    with store._sessions() as session:
        stalled = session.execute(
            _STALLED, {"application": APPLICATION_NAME, "after": after_s}
        ).all()
    return sum(
        end_session(
            store,
            pid,
            what="a database session stalled in the middle of a message that held locks "
            "others waited for (a partition, or a frozen controller)",
            fields={"role": role, "waited_s": round(waited_s, 1)},
        )
        for pid, role, waited_s in stalled
    )


def end_session(store: StoreCore, pid: int, *, what: str, fields: dict[str, Any]) -> bool:
    """End the database session ``pid`` (``pg_terminate_backend``), saying so in a
    warning about ``what`` it was; whether it was ended. Without the privilege to end
    it, a warning says what to grant instead."""
    extra = {"pid": pid, **fields}
    try:
        with store._sessions() as session:
            done = bool(
                session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            )
    except (SQLAlchemyError, OrchestrifyError) as err:
        log.warning(
            f"could not end {what}; give the controllers one database role, or grant them "
            "pg_signal_backend",
            extra={**extra, "error": str(getattr(err, "orig", None) or err).splitlines()[0]},
        )
        return False
    if done:
        log.warning(f"ended {what}", extra=extra)
    return done


async def run_forever(store: StoreCore, *, interval_s: float, after_s: float) -> None:
    """``end_stalled_sessions`` every ``interval_s`` (one query; nothing on SQLite)."""
    if store.dialect != "postgresql":
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(end_stalled_sessions, store, after_s=after_s)
        except OrchestrifyError as exc:  # the store is down: next time
            log.debug("stalled sessions not checked", extra={"error": str(exc)})
        except Exception:
            log.exception("checking for stalled database sessions failed; trying again")
