"""The leader lease on both engines: acquire, renew, takeover after expiry with the epoch
one higher, release, the cluster view, and fencing (a deposed holder's write is refused
and writes nothing; on PostgreSQL an acquisition waits for a fenced write in flight)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.postgres import PASSWORD, PG_USER, PostgresServer
from orchestrify.errors import Fenced
from orchestrify.models import ServiceSpec
from orchestrify.store import Store, listen, stalls
from orchestrify.store.engine import Fence, fenced
from orchestrify.store.leases import LeaseStore, LeaseTerm
from tests.api.conftest import wait_for

LONG = 60.0  # a lease that does not expire during the test
SHORT = 0.5  # a lease the test waits out


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def leases(store: Store) -> LeaseStore:
    return LeaseStore(store)


def acquire(
    leases: LeaseStore, who: str, *, lease_s: float = LONG, **kw: object
) -> LeaseTerm | None:
    return leases.acquire(who, lease_s=lease_s, url=f"http://{who}", version="test", **kw)  # type: ignore[arg-type]


def renew(leases: LeaseStore, who: str, epoch: int, *, lease_s: float = LONG) -> object:
    return leases.renew(who, epoch=epoch, lease_s=lease_s, url=f"http://{who}", version="test")


def test_the_first_controller_takes_the_lease_and_the_second_does_not(
    leases: LeaseStore,
) -> None:
    first = acquire(leases, "a")
    assert first is not None and first.holder == "a" and first.epoch == 1
    assert first.expires_at > first.acquired_at
    assert acquire(leases, "b") is None
    # The holder itself does not take it again either (no epoch bump) unless it asks to.
    assert acquire(leases, "a") is None
    view = leases.cluster(gone_after_s=LONG)
    assert (view.leader, view.epoch) == ("a", 1)
    assert {c.id: c.state for c in view.controllers} == {"a": "leader", "b": "follower"}


def test_renewal_extends_only_the_holders_lease_at_its_epoch(leases: LeaseStore) -> None:
    term = acquire(leases, "a")
    assert term is not None
    renewed = renew(leases, "a", term.epoch)
    assert renewed is not None and renewed >= term.expires_at  # type: ignore[operator]
    assert renew(leases, "b", term.epoch) is None  # not the holder
    assert renew(leases, "a", term.epoch + 1) is None  # not its epoch
    assert leases.cluster(gone_after_s=LONG).epoch == term.epoch  # nothing bumped it


def test_an_expired_lease_goes_to_another_controller_with_the_next_epoch(
    leases: LeaseStore,
) -> None:
    old = acquire(leases, "a", lease_s=SHORT)
    assert old is not None
    assert acquire(leases, "b") is None  # not expired yet
    new = wait_for(lambda: acquire(leases, "b"), what="a's lease to expire")
    assert (new.holder, new.epoch) == ("b", old.epoch + 1)
    # The old holder can no longer renew: it must stop acting as the leader.
    assert renew(leases, "a", old.epoch) is None
    assert leases.cluster(gone_after_s=LONG).leader == "b"


def test_a_deposed_holders_fenced_write_is_refused_and_writes_nothing(
    store: Store, leases: LeaseStore
) -> None:
    old = acquire(leases, "a")
    assert old is not None
    with fenced(Fence(holder="a", epoch=old.epoch)):
        store.create_service(ServiceSpec(name="before", image="demo:1"))  # still leads
    assert acquire(leases, "b", force=True) is not None  # a is deposed
    events_before = len(store.list_events(limit=1000))
    with fenced(Fence(holder="a", epoch=old.epoch)), pytest.raises(Fenced):
        store.create_service(ServiceSpec(name="late", image="demo:1"))
    assert [s.name for s in store.list_services()] == ["before"]
    assert len(store.list_events(limit=1000)) == events_before
    b_term = leases.cluster(gone_after_s=LONG).epoch
    assert b_term is not None
    with fenced(Fence(holder="b", epoch=b_term)):
        store.create_service(ServiceSpec(name="by-b", image="demo:1"))
    # An expired lease nobody took yet fences its holder's writes too.
    leases.release("b", epoch=b_term)
    with fenced(Fence(holder="b", epoch=b_term)), pytest.raises(Fenced):
        store.create_service(ServiceSpec(name="expired", image="demo:1"))
    # Writes outside any fence (API requests) are never refused.
    store.create_service(ServiceSpec(name="api", image="demo:1"))
    assert sorted(s.name for s in store.list_services()) == ["api", "before", "by-b"]


def test_a_restart_reclaims_its_own_lease_and_a_release_frees_it(leases: LeaseStore) -> None:
    term = acquire(leases, "a")
    assert term is not None
    assert acquire(leases, "b", reclaim_own=True) is None  # someone else's: waited out
    again = acquire(leases, "a", reclaim_own=True)  # a run of "a" before a restart
    assert again is not None and again.epoch == term.epoch + 1
    assert leases.release("a", epoch=term.epoch) is False  # not that term any more
    assert leases.release("a", epoch=again.epoch) is True
    view = leases.cluster(gone_after_s=LONG)
    assert view.leader is None and view.lease_expires_at is None
    taken = acquire(leases, "b")  # at once, no expiry to wait for
    assert taken is not None and taken.epoch == again.epoch + 1


def test_forced_takeover_and_a_stepped_down_term(leases: LeaseStore) -> None:
    term = acquire(leases, "a")
    assert term is not None
    forced = acquire(leases, "b", force=True)  # SQLite at start: one host, one controller
    assert forced is not None and forced.epoch == term.epoch + 1
    assert acquire(leases, "b", reclaim_epoch=term.epoch) is None  # not b's old term
    back = acquire(leases, "b", reclaim_epoch=forced.epoch)  # b's own, stepped down from
    assert back is not None and back.epoch == forced.epoch + 1


def test_the_cluster_view_marks_a_silent_controller_gone(leases: LeaseStore) -> None:
    leases.announce("a", url="http://a:1", version="1.0")
    acquire(leases, "b")
    view = wait_for(
        lambda: (v := leases.cluster(gone_after_s=0.2)).controllers[0].state == "gone" and v,
        what="a to be unseen for 0.2 s",
    )
    a, b = view.controllers
    assert (a.id, a.url, a.version, a.leader, a.leader_since) == (
        "a",
        "http://a:1",
        "1.0",
        False,
        None,
    )
    assert (b.id, b.state, b.leader) == ("b", "leader", True)
    assert b.leader_since is not None and view.lease_expires_at is not None


def _lease_waiters(server: PostgresServer, database: str) -> int:
    with server.connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND (query LIKE 'UPDATE leases%' OR query LIKE 'SELECT leases.name%FOR UPDATE')"
        ).fetchone()
    return int(row[0]) if row else 0


def test_an_acquisition_waits_for_a_fenced_write_in_flight(postgres: PostgresServer) -> None:
    """The fence reads the lease row FOR SHARE: a controller taking over the expired
    lease waits until the old leader's write commits, so that write lands before the new
    term begins, never during it."""
    database = postgres.new_database()
    store = Store(postgres.url(database))
    leases = LeaseStore(store)
    try:
        old = acquire(leases, "a", lease_s=LONG)
        assert old is not None
        taken: list[LeaseTerm | None] = []
        with fenced(Fence(holder="a", epoch=old.epoch)), store.write() as tx:
            tx.add_event("written by the old leader", kind="decision")
            # b takes the lease meanwhile (forced, as if a's had expired: no waiting
            # out a lease on a busy machine): its UPDATE must wait for this write.
            thief = threading.Thread(target=lambda: taken.append(acquire(leases, "b", force=True)))
            thief.start()
            wait_for(lambda: _lease_waiters(postgres, database) == 1, what="b to wait on the lock")
            assert not taken
        thief.join(timeout=60)
        (new,) = taken
        assert new is not None and new.epoch == old.epoch + 1
        assert [e.message for e in store.list_events()] == ["written by the old leader"]
        with fenced(Fence(holder="a", epoch=old.epoch)), pytest.raises(Fenced):
            store.record_event("too late", kind="decision")
    finally:
        store.close()
        postgres.drop_database(database)


def _fenced_write_in_flight(store: Store) -> tuple[LeaseTerm, Any]:
    """Controller a takes a short lease on ``store`` and begins a fenced write (which holds
    the lease row FOR SHARE), left open: the term and the write."""
    old = acquire(LeaseStore(store), "a", lease_s=SHORT)
    assert old is not None
    with fenced(Fence(holder="a", epoch=old.epoch)):
        return old, store.write().__enter__()


def test_a_write_stalled_mid_transaction_ends_and_frees_the_lease(
    postgres: PostgresServer,
) -> None:
    """A leader cut off from the database in the middle of a fenced write (a partition:
    the server hears nothing more from it) would hold the lease row FOR SHARE until TCP
    gives up, hours later, and no one could be elected. The controller's sessions carry
    ``idle_in_transaction_session_timeout``: the server ends the stalled transaction, its
    locks go, and another controller takes the lease."""
    database = postgres.new_database()
    url = postgres.url(database)
    stalled = Store(url, idle_in_transaction_s=1.0)
    other = Store(url)
    try:
        old, tx = _fenced_write_in_flight(stalled)
        taken: list[LeaseTerm | None] = []
        time.sleep(SHORT * 1.5)  # a's lease has expired: only a's row lock stands in b's way
        thief = threading.Thread(target=lambda: taken.append(acquire(LeaseStore(other), "b")))
        thief.start()
        thief.join(timeout=60)
        assert taken and taken[0] is not None and taken[0].epoch == old.epoch + 1
        with pytest.raises(Exception):  # noqa: B017  (the server ended a's session)
            tx.__exit__(None, None, None)
    finally:
        stalled.close()
        other.close()
        postgres.drop_database(database)


def _stall_mid_pipeline(tx: Any) -> Any:
    """Leave ``tx``'s session in the middle of the extended protocol: a statement sent in
    a pipeline without its Sync, as when a partition cuts a message in two. The server
    then counts the session as active (waiting for the rest), so neither
    idle_in_transaction_session_timeout nor statement_timeout ends it."""
    connection = tx.session.connection()
    raw = connection.connection.dbapi_connection
    pipeline = raw.pipeline()
    pipeline.__enter__()
    raw.cursor().execute("SELECT 1")
    raw.pgconn.flush()  # sent (Parse, Bind, Describe, Execute), and no Sync after it
    # Kept by the caller (once collected, the pipeline would send its Sync), which drops
    # the connection at the end (``connection.invalidate()``).
    return pipeline, connection


def _session_state(server: PostgresServer, database: str, pid: int) -> str | None:
    with server.connect(database) as conn:
        row = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row[0] if row else None


def test_a_fenced_write_stalled_mid_message_is_ended_by_the_next_leader(
    postgres: PostgresServer,
) -> None:
    """A leader cut off in the middle of a pipelined fenced write holds the lease row FOR
    SHARE in a session the server counts as active: no server timeout ends it, and before
    the fix no controller could ever be elected again (seen in the partition drill). A
    follower that waited lease_s/3 for the expired lease's row ends the former term's
    transactions, and takes the lease at its next attempt; the stalled write never
    lands."""
    database = postgres.new_database()
    url = postgres.url(database)
    stalled = Store(url, idle_in_transaction_s=1.0)
    other = Store(url)
    try:
        old, tx = _fenced_write_in_flight(stalled)
        tx.add_event("written by the old leader", kind="decision")
        tx.session.flush()
        pid = tx.session.connection().connection.dbapi_connection.info.backend_pid
        pipeline, connection = _stall_mid_pipeline(tx)
        time.sleep(SHORT * 1.5 + 1.0)  # a's lease has expired; its idle timeout would have
        assert _session_state(postgres, database, pid) == "active"  # ... but it is active
        leases = LeaseStore(other)
        started = time.monotonic()
        taken: list[LeaseTerm] = []
        thief = threading.Thread(
            target=lambda: taken.append(
                wait_for(lambda: acquire(leases, "b", lease_s=3.0), what="b to take the lease")
            ),
            daemon=True,  # left behind if b's acquisition hangs on the lock (the bug)
        )
        thief.start()
        thief.join(timeout=30)
        assert taken, "b never took the lease: a's stalled write still holds its row"
        print(f"taken over {time.monotonic() - started:.2f}s after the first attempt")
        assert taken[0].epoch == old.epoch + 1
        assert _session_state(postgres, database, pid) is None, "a's session still runs"
        assert [e.message for e in other.list_events()] == []
        connection.invalidate()
        del pipeline
    finally:
        stalled.close()
        other.close()
        postgres.drop_database(database)


def test_a_stale_term_this_controller_may_not_end_is_logged_and_not_taken(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Ending another role's session needs pg_signal_backend: without it the follower
    says what to grant, does not take the lease, and raises nothing."""
    database = postgres.new_database()
    with postgres.connect("postgres") as conn:
        conn.execute("DROP ROLE IF EXISTS lease_weak")
        conn.execute(f"CREATE ROLE lease_weak LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f'GRANT ALL PRIVILEGES ON DATABASE "{database}" TO lease_weak')
    with postgres.connect(database) as conn:
        conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO lease_weak")
        conn.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO lease_weak")
    url = postgres.url(database)
    stalled = Store(url)
    weak = Store(url.replace(f"{PG_USER}:", "lease_weak:", 1))
    try:
        _, tx = _fenced_write_in_flight(stalled)
        pipeline, connection = _stall_mid_pipeline(tx)
        time.sleep(SHORT * 1.5)
        with caplog.at_level("WARNING", logger="orchestrify.store.leases"):
            assert acquire(LeaseStore(weak), "b", lease_s=0.6) is None
        assert any("pg_signal_backend" in r.getMessage() for r in caplog.records)
        connection.invalidate()
        del pipeline
    finally:
        stalled.close()
        weak.close()
        postgres.drop_database(database)
        with postgres.connect("postgres") as conn:
            conn.execute("DROP OWNED BY lease_weak")
            conn.execute("DROP ROLE IF EXISTS lease_weak")


def test_a_write_stalled_mid_message_holding_the_change_counter_is_ended(
    postgres: PostgresServer,
) -> None:
    """Every write holds the change counter's row until it commits: a write of any
    controller stalled mid-message would block every later write of every controller.
    The stall watch ends it once it has waited on its client longer than a transaction
    of ours may idle; the blocked write then lands, the stalled one never does."""
    database = postgres.new_database()
    url = postgres.url(database)
    stalled = Store(url)
    other = Store(url)
    try:
        tx = stalled.write().__enter__()  # an API write: not fenced
        tx.add_event("the stalled write", kind="decision")
        tx.session.flush()
        listen.announce(tx.session, origin="stalled", kinds=set())  # the counter, locked
        pid = tx.session.connection().connection.dbapi_connection.info.backend_pid
        pipeline, connection = _stall_mid_pipeline(tx)
        done = threading.Event()
        writer = threading.Thread(
            target=lambda: (other.record_event("the next write", kind="decision"), done.set()),
            daemon=True,  # left behind if it never gets the lock (the bug)
        )
        writer.start()
        wait_for(lambda: _lock_waiters(postgres, database) >= 1, what="the write to wait")
        assert stalls.end_stalled_sessions(other, after_s=60.0) == 0  # not stalled that long
        assert not done.is_set()
        time.sleep(0.6)
        assert stalls.end_stalled_sessions(other, after_s=0.5) == 1
        assert done.wait(30), "the write still waits for the stalled session's lock"
        assert _session_state(postgres, database, pid) is None
        assert [e.message for e in other.list_events()] == ["the next write"]
        connection.invalidate()
        del pipeline
    finally:
        stalled.close()
        other.close()
        postgres.drop_database(database)


def _lock_waiters(server: PostgresServer, database: str) -> int:
    with server.connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0
