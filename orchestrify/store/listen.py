"""Changes across controllers (PostgreSQL): the commit sequence, NOTIFY and LISTEN.

Every write transaction that changes something bumps one counter row (``meta``, key
``change_sequence``) just before it commits and sends ``pg_notify`` on the channel
``orchestrify_changes`` with the new value, the kinds of change and its origin (the
store instance that wrote it). Both are part of the transaction: PostgreSQL delivers
the notification only once it commits, and the counter row's lock orders the commits,
so the counter is a version every controller agrees on (a snapshot that sees value N
sees every change numbered N or less). Its first value is the clock in milliseconds at
the time the row is made, so a new or wiped store never repeats a version a watcher
may still hold.

``ChangeListener`` is the other side: a thread per controller with its own connection
that LISTENs and hands each change committed by another controller to the change feed;
on every (re)connect and every ``resync_s`` it reads the counter, the safety net for a
notification lost while it was away. SQLite has none of this: one controller owns it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.orm import Session

__all__ = [
    "CHANNEL",
    "KINDS",
    "SEQUENCE_KEY",
    "ChangeListener",
    "announce",
    "lock_upstreams_clock",
    "new_origin",
    "read_sequence",
    "upstreams_as_of",
]

log = logging.getLogger(__name__)

CHANNEL = "orchestrify_changes"
SEQUENCE_KEY = "change_sequence"
# What a change may be: "spec" (what agents must run), "nodes" (the fleet's membership
# and node states: what the scheduler decides on, not what any agent runs), "state"
# (anything observed), "events" (a new event in the audit trail).
KINDS = frozenset({"spec", "nodes", "state", "events"})
# The advisory lock that orders a drain's ``left_upstreams_at`` with an upstreams
# snapshot's ``as_of`` across controllers (see ``lock_upstreams_clock``).
_UPSTREAMS_CLOCK = "orchestrify:upstreams-clock"
# How long an upstreams read tries that lock before it queues for it, seconds.
_TRY_CLOCK_LOCK_S = 2.0
# Waits between reconnects after the database went away, seconds (the last repeats).
RECONNECT_BACKOFF_S: Sequence[float] = (0.2, 0.5, 1.0, 2.0, 5.0)
# How long one wait for a notification lasts before the thread checks whether it must
# stop or resync: also the longest a shutdown waits for it.
POLL_S = 0.5

_BUMP = text(
    "INSERT INTO meta (key, value) VALUES (:key, :first) "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) "
    "RETURNING value"
)


def new_origin() -> str:
    """An id for one store instance (host, process, and a random part: two apps in one
    process are two origins), sent with its notifications so it can skip its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _first_value() -> str:
    return str(time.time_ns() // 1_000_000)


def with_implied(kinds: Iterable[str]) -> set[str]:
    """``kinds`` with what they imply: a change of what must run, or of the nodes, is a
    change of state."""
    out = set(kinds)
    if out & {"spec", "nodes"}:
        out.add("state")
    return out


def announce(session: Session, *, origin: str, kinds: set[str]) -> int:
    """Inside a write transaction, just before it commits: bump the commit sequence
    (its row stays locked until the commit, which orders commits by their number) and
    queue the notification PostgreSQL sends if, and only if, the transaction commits.
    The new sequence value."""
    sequence = int(
        session.execute(_BUMP, {"key": SEQUENCE_KEY, "first": _first_value()}).scalar_one()
    )
    payload = json.dumps({"origin": origin, "sequence": sequence, "kinds": sorted(kinds)})
    session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload}
    )
    return sequence


def read_sequence(conn: Connection | psycopg.Connection) -> int:
    """The commit sequence now (made, from the clock, when the store has none yet)."""
    if isinstance(conn, psycopg.Connection):
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (SEQUENCE_KEY, _first_value()),
        )
        row = conn.execute("SELECT value FROM meta WHERE key = %s", (SEQUENCE_KEY,)).fetchone()
        assert row is not None
        return int(row[0])
    conn.execute(
        text("INSERT INTO meta (key, value) VALUES (:key, :first) ON CONFLICT (key) DO NOTHING"),
        {"key": SEQUENCE_KEY, "first": _first_value()},
    )
    return int(
        conn.execute(
            text("SELECT value FROM meta WHERE key = :key"), {"key": SEQUENCE_KEY}
        ).scalar_one()
    )


def lock_upstreams_clock(session: Session) -> datetime:
    """In a write transaction that takes a replica out of the upstreams: the database's
    time, read once this transaction holds the upstreams clock lock in shared mode (held
    until it ends). ``upstreams_as_of`` takes it in exclusive mode, so its ``as_of`` is
    either read after this transaction ended (and its snapshot has the change) or before
    this time (and ``as_of`` is not after ``left_upstreams_at``). One clock, the
    database's, for every controller: no skew between their hosts."""
    session.execute(
        text("SELECT pg_advisory_xact_lock_shared(hashtextextended(:name, 0))"),
        {"name": _UPSTREAMS_CLOCK},
    )
    now: datetime = session.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now.astimezone(UTC)


def upstreams_as_of(conn: Connection) -> datetime:
    """The ``as_of`` of an upstreams snapshot about to be read: the database's time,
    read holding the upstreams clock lock exclusively (in its own short transaction,
    ``conn`` in one that ends right after), so every transaction that stamped a
    ``left_upstreams_at`` before it has ended, and its change is in the snapshot.

    It tries the lock rather than queue for it at first: a queued exclusive request
    makes later shared ones wait behind it, which could tie a drain that waits on rows
    of another drain into a deadlock (PostgreSQL would break it, at a retry's cost)."""
    name = {"name": _UPSTREAMS_CLOCK}
    give_up = time.monotonic() + _TRY_CLOCK_LOCK_S
    while not conn.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:name, 0))"), name
    ).scalar_one():
        if time.monotonic() > give_up:  # drains without a pause: queue after all
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), name)
            break
        time.sleep(0.01)
    now: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now.astimezone(UTC)


def libpq_conninfo(url: URL) -> str:
    """The libpq URI (password included) of a ``postgresql+psycopg://`` SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


Deliver = Callable[[set[str], int], None]


class ChangeListener:
    """A thread that LISTENs on its own connection and calls ``deliver(kinds, sequence)``
    for every change another store instance (``origin`` differs) committed; on every
    (re)connect and every ``resync_s`` it reads the sequence and delivers every kind up
    to it (a missed notification is found then). Reconnects with backoff when the
    database goes away; never raises."""

    def __init__(
        self,
        url: URL,
        *,
        origin: str,
        deliver: Deliver,
        resync_s: float = 30.0,
    ) -> None:
        self._conninfo = libpq_conninfo(url)
        self._origin = origin
        self._deliver = deliver
        self.resync_s = resync_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.connects = 0  # how many times it (re)connected, for tests and logs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="change-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread (at most about ``POLL_S``, or a connect attempt)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    application_name="orchestrify-listen",
                    # A peer that vanished without closing (a partition) is found out.
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Anything may have changed while it was away: resync at once.
                    self._resync(conn)
                    self.connects += 1
                    if failures:
                        log.info("listening for changes again", extra={"after_failures": failures})
                    failures = 0
                    self.connected.set()
                    self._listen(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                if self._stop.is_set():
                    return
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                log.warning(
                    "listening for changes failed; reconnecting",
                    extra={"error": str(exc), "retry_s": delay},
                )
                self._stop.wait(delay)
            except Exception:  # a bug must not end the thread for good
                self.connected.clear()
                log.exception("the change listener failed; restarting it")
                self._stop.wait(RECONNECT_BACKOFF_S[-1])
        self.connected.clear()

    def _listen(self, conn: psycopg.Connection) -> None:
        next_resync = time.monotonic() + self.resync_s
        while not self._stop.is_set():
            for note in conn.notifies(timeout=POLL_S):
                self._received(note.payload)
            if time.monotonic() >= next_resync:
                self._resync(conn)
                next_resync = time.monotonic() + self.resync_s

    def _received(self, payload: str) -> None:
        try:
            body = json.loads(payload)
            origin, sequence, kinds = body["origin"], int(body["sequence"]), set(body["kinds"])
        except (ValueError, KeyError, TypeError):
            log.warning("an unreadable change notification", extra={"payload": payload[:200]})
            return
        if origin == self._origin:
            return  # this store's own change: its write already told the feed
        self._deliver(with_implied(kinds & KINDS), sequence)

    def _resync(self, conn: psycopg.Connection) -> None:
        self._deliver(set(KINDS), read_sequence(conn))
