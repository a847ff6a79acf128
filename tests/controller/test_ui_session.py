"""The status page's session cookies, CSRF tokens, sign-in limit and table view model,
without an app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrify.controller.ui.fleet import fleet_rows, heartbeat_age, human_bytes
from orchestrify.controller.ui.session import LoginLimiter, SessionSigner, login_csrf_ok
from orchestrify.models import DesiredState, Node, NodeState, Replica, ReplicaState

NOW = 1_800_000_000.0


def test_a_session_verifies_under_its_key_until_it_expires() -> None:
    signer = SessionSigner("token-a")
    session, value = signer.issue(now=NOW, lifetime_s=3600)
    assert signer.verify(value, now=NOW + 3599) == session
    assert signer.verify(value, now=NOW + 3600) is None  # expired
    assert SessionSigner("token-b").verify(value, now=NOW) is None  # another admin token
    sid, expires, signature = value.split(".")
    assert signer.verify(f"{sid}.{int(expires) + 86_400}.{signature}", now=NOW) is None
    assert signer.verify(f"{sid}x.{expires}.{signature}", now=NOW) is None
    assert signer.verify("", now=NOW) is None and signer.verify(None, now=NOW) is None
    assert "token-a" not in value


def test_csrf_tokens_are_per_session_and_per_key() -> None:
    signer = SessionSigner("token-a")
    one, _ = signer.issue(now=NOW, lifetime_s=60)
    two, _ = signer.issue(now=NOW, lifetime_s=60)
    assert one.id != two.id
    assert signer.csrf_ok(one, signer.csrf(one))
    assert not signer.csrf_ok(one, signer.csrf(two))
    assert not signer.csrf_ok(one, SessionSigner("token-b").csrf(one))
    assert not signer.csrf_ok(one, None) and not signer.csrf_ok(one, "é\udfff")


def test_the_login_csrf_field_must_equal_a_cookie_of_ours() -> None:
    token = "A" * 43
    assert login_csrf_ok(token, token)
    assert not login_csrf_ok(token, "B" * 43)
    assert not login_csrf_ok(None, token) and not login_csrf_ok(token, None)
    assert not login_csrf_ok("short", "short")  # not a value this controller sets


def test_five_wrong_tokens_in_the_window_limit_an_address_until_the_oldest_leaves_it() -> None:
    limiter = LoginLimiter(tries=5, window_s=60)
    for second in range(5):
        assert limiter.retry_after("10.0.0.1", now=100 + second) is None
        limiter.wrong("10.0.0.1", now=100 + second)
    assert limiter.retry_after("10.0.0.1", now=105) == 55
    assert limiter.retry_after("10.0.0.2", now=105) is None  # per address
    assert limiter.retry_after("10.0.0.1", now=160.5) is None  # the first one left
    limiter.wrong("10.0.0.1", now=160.5)  # five again: until the one of 101 leaves
    assert limiter.retry_after("10.0.0.1", now=160.5) == 1
    limiter.right("10.0.0.1")
    assert limiter.retry_after("10.0.0.1", now=160.5) is None


def test_the_limiter_keeps_a_bounded_number_of_addresses() -> None:
    limiter = LoginLimiter(tries=1, window_s=60, max_addresses=3)
    for i in range(10):
        limiter.wrong(f"10.0.0.{i}", now=0)
    assert len(limiter._wrong) == 3
    assert limiter.retry_after("10.0.0.9", now=1) is not None


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (None, "—"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (8 * 2**30, "8 GiB"),
        (7.5 * 2**30, "7.5 GiB"),
        (500 * 2**30, "500 GiB"),
        (3 * 2**50, "3072 TiB"),
    ],
)
def test_human_bytes(count: int | None, text: str) -> None:
    assert human_bytes(count) == text


def test_heartbeat_age_in_the_largest_whole_unit() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert heartbeat_age(None, now) == "never"
    assert heartbeat_age(now - timedelta(seconds=3), now) == "3 s ago"
    assert heartbeat_age(now - timedelta(minutes=5), now) == "5 min ago"
    assert heartbeat_age(now - timedelta(hours=3), now) == "3 h ago"
    assert heartbeat_age(now - timedelta(days=3), now) == "3 days ago"
    assert heartbeat_age(now + timedelta(seconds=2), now) == "0 s ago"  # a clock ahead


def _node(name: str, state: NodeState, **kw: object) -> Node:
    return Node(
        id=f"id-{name}",
        name=name,
        address="10.0.0.1",
        state=state,
        created_at=datetime(2030, 1, 1, tzinfo=UTC),
        **kw,  # type: ignore[arg-type]
    )


def test_rows_say_each_state_in_words_and_mark_the_nodes_not_serving() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    nodes = [
        _node("a", NodeState.READY),
        _node("b", NodeState.NOT_READY),
        _node("c", NodeState.UNREACHABLE),
        _node("d", NodeState.DRAINING, removing=True),
    ]
    replica = Replica(
        id="web-0123abcd",
        service="web",
        node="id-d",
        state=ReplicaState.HEALTHY,
        desired=DesiredState.DRAIN,
        created_at=now,
        updated_at=now,
    )
    rows = fleet_rows(nodes, [replica], now=now)
    assert [(r.state, r.tone, r.action) for r in rows] == [
        ("ready", "ready", "drain"),
        ("not ready", "down", "drain"),
        ("unreachable", "down", "drain"),
        ("draining", "draining", "activate"),
    ]
    assert rows[3].removing and not rows[0].removing
    (chip,) = rows[3].replicas
    assert (chip.label, chip.state, chip.desired, chip.tone) == (
        "web · 0123abcd",
        "healthy",
        "drain",
        "leaving",
    )
    assert rows[0].replicas == () and rows[0].heartbeat == "never"
