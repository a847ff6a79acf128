"""Registration is idempotent: a repeat (its first answer lost) gets the same node, token
and ``known`` without a write; a refusal is recorded at most once a minute per name."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrify.errors import Conflict, InvalidSpec
from orchestrify.models import Heartbeat, NodeRegistration, Orphan
from orchestrify.store import Store, utcnow
from orchestrify.store.nodes import REFUSAL_EVENT_INTERVAL_S, RefusalLog


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url, data_dir=tmp_path)
    yield opened
    opened.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(store: Store) -> Clock:
    """The store's refusal log on a clock the test moves."""
    fake = Clock()
    store.__dict__["_refusals"] = RefusalLog(interval_s=REFUSAL_EVENT_INTERVAL_S, clock=fake)
    return fake


@pytest.fixture
def writes(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per write transaction the store opens from now on."""
    opened: list[int] = []
    write: Callable[..., Any] = store.write

    def counting(**kw: Any) -> Any:
        opened.append(1)
        return write(**kw)

    monkeypatch.setattr(store, "write", counting)
    return opened


def proposal(name: str = "w1", **kw: Any) -> NodeRegistration:
    """What a new agent sends: the id and token it picked, no cluster, no container."""
    return NodeRegistration(
        name=name,
        address=kw.pop("address", "10.0.0.1"),
        node_id=kw.pop("node_id", secrets.token_hex(6)),
        node_token=kw.pop("node_token", secrets.token_urlsafe(32)),
        cpus=4,
        memory_total=8 << 30,
        **kw,
    )


def node_events(store: Store) -> list[Any]:
    return store.list_events(kind="node")


def test_a_repeated_registration_is_the_same_node_and_token_without_a_write(
    store: Store, writes: list[int]
) -> None:
    reg = proposal()
    first = store.enroll_node(reg)
    assert first.node.id == reg.node_id and first.token == reg.node_token
    assert first.known is False
    events, wrote = len(node_events(store)), len(writes)
    again = store.enroll_node(reg)  # the first answer was lost: sent again
    assert (again.node.id, again.token, again.known) == (first.node.id, first.token, False)
    assert [n.id for n in store.list_nodes()] == [first.node.id]  # no second node
    assert len(node_events(store)) == events  # no second event
    assert len(writes) == wrote  # answered from a read
    store.authenticate_node(first.node.id, reg.node_token or "")  # the token works


def test_a_re_registration_keeps_the_token_it_presents(store: Store) -> None:
    reg = proposal()
    first = store.enroll_node(reg)
    store.heartbeat(first.node.id, Heartbeat(cpu_percent=1.0))
    moved = store.enroll_node(reg.model_copy(update={"address": "10.0.0.2"}))  # a change
    assert moved.token == reg.node_token and moved.known is True
    assert store.get_node(first.node.id).address == "10.0.0.2"
    store.authenticate_node(first.node.id, reg.node_token or "")
    # The admin, without the node's token, gets a fresh one (and the old one stops working).
    admin = store.enroll_node(reg.model_copy(update={"node_token": None}), trusted=True)
    assert admin.token != reg.node_token and admin.node.id == first.node.id


def test_a_node_made_unknown_answers_unknown_until_its_agent_is_heard_from(
    store: Store,
) -> None:
    """An agent back to a store that forgot its node (its containers orphans at the first
    answer) whose answer was lost gets known=False again on the retry; once it heartbeats
    (so it had the answer), a registration is answered known=True."""
    mine = Orphan(container_id="c1", replica="web-1", service="web", cluster_id="lost")
    reg = proposal(cluster_id="lost", containers=[mine])
    assert store.enroll_node(reg).known is False
    assert store.enroll_node(reg).known is False  # the retry: answered as the first try
    moved = reg.model_copy(update={"address": "10.0.0.7"})  # a retry with a change: a write
    assert store.enroll_node(moved).known is False
    store.heartbeat(reg.node_id or "", Heartbeat(cpu_percent=1.0))
    assert store.enroll_node(moved).known is True


def test_a_report_too_says_the_agent_had_its_answer(store: Store) -> None:
    reg = proposal()
    assert store.enroll_node(reg).known is False
    store.apply_reports(reg.node_id or "", [], full=True, orphans=[])
    assert store.enroll_node(reg).known is True


def test_the_batched_heartbeats_clear_it_too(store: Store) -> None:
    reg = proposal()
    store.enroll_node(reg)
    store.record_heartbeats({reg.node_id or "": (Heartbeat(cpu_percent=1.0), utcnow())})
    assert store.enroll_node(reg).known is True


def test_a_refusal_is_recorded_once_a_minute_per_name_and_costs_no_write_otherwise(
    store: Store, clock: Clock, writes: list[int]
) -> None:
    owner = store.enroll_node(proposal())
    thief = proposal(node_id=owner.node.id)  # a known id with another token
    for _ in range(3):
        with pytest.raises(Conflict, match="wrong node token"):
            store.enroll_node(thief)
    refused = [e for e in node_events(store) if e.outcome == "refused"]
    assert len(refused) == 1 and refused[0].reason == "node_token"
    assert len(writes) == 2  # the registration, and the one refusal recorded
    # Another name is another record.
    other = store.enroll_node(proposal("w2"))
    with pytest.raises(Conflict):
        store.enroll_node(proposal("w2", node_id=other.node.id))
    assert len([e for e in node_events(store) if e.outcome == "refused"]) == 2
    # A minute on: recorded again, with the count of those left unrecorded.
    clock.now += REFUSAL_EVENT_INTERVAL_S
    with pytest.raises(Conflict):
        store.enroll_node(thief)
    last = [e for e in node_events(store) if e.outcome == "refused"][-1]
    assert last.node == "w1" and last.data["unrecorded_before"] == 2


def test_a_name_held_by_a_ready_node_is_refused_once_a_minute_not_per_retry(
    store: Store, clock: Clock, writes: list[int]
) -> None:
    store.enroll_node(proposal())
    before = len(writes)
    for _ in range(5):  # an agent of an older build: no id; or another host, same --name
        with pytest.raises(Conflict, match="already named"):
            store.enroll_node(NodeRegistration(name="w1", address="10.0.0.9"))
    assert len(writes) == before + 1
    refused = [e for e in node_events(store) if e.outcome == "refused"]
    assert [e.reason for e in refused] == ["name_taken"]


def test_a_proposed_token_too_short_or_id_unfit_is_refused_naming_the_field(
    store: Store,
) -> None:
    """The model refuses them (the API's 422, in its schema), and so does the store for
    a registration made without the model's checks."""
    for field, bad in (("node_token", "x" * 31), ("node_id", "a/b")):
        with pytest.raises(ValidationError) as invalid:
            proposal(**{field: bad})
        assert invalid.value.errors()[0]["loc"] == (field,)
        unchecked = NodeRegistration.model_construct(**{**proposal().model_dump(), field: bad})
        with pytest.raises(InvalidSpec) as err:
            store.enroll_node(unchecked)
        assert err.value.field == field
    assert store.list_nodes() == []


def test_a_new_agent_takes_a_silent_node_of_its_name_over_and_its_retry_too(
    store: Store, writes: list[int]
) -> None:
    """A host that lost its state file comes back as a new agent (a fresh id): it takes
    the silent node of its name over, with the token it proposed, so its retry is the
    same registration."""
    old = store.enroll_node(NodeRegistration(name="w1", address="10.0.0.1"))
    store.mark_not_ready({old.node.id: 99.0}, timeout_s=15, still_silent=lambda _: True)
    reg = proposal()
    back = store.enroll_node(reg)
    assert back.node.id == old.node.id and back.token == reg.node_token and back.known
    wrote = len(writes)
    again = store.enroll_node(reg)
    assert (again.node.id, again.token, again.known) == (old.node.id, reg.node_token, True)
    assert len(writes) == wrote
    # An agent that ran under another id (it says its cluster) is refused instead: its
    # containers carry that id.
    store.mark_not_ready({old.node.id: 99.0}, timeout_s=15, still_silent=lambda _: True)
    with pytest.raises(Conflict, match="belongs to node"):
        store.enroll_node(proposal(cluster_id=store.cluster_id))
