"""The fair order of undecided alerts: round-robin over lanes (service, else node, else
alert name), arrival order within a lane, and receipts of an older build (no lane)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, update

from orchestrify.alerting.payload import AlertBatch
from orchestrify.store import Store, utcnow
from orchestrify.store.alert_tables import AlertReceiptRow
from orchestrify.store.alerts import AlertStore, alert_lane
from tests.alerting.payloads import am_alert, am_payload

T0 = datetime(2026, 11, 21, 21, 0, tzinfo=UTC)


@pytest.fixture
def alerts(tmp_path: Path, store_url: str) -> Iterator[AlertStore]:
    store = Store.open(store_url, data_dir=tmp_path)
    yield AlertStore(store)
    store.close()


def batch(alertname: str, count: int, *, tag: str, **labels: str) -> AlertBatch:
    """``count`` distinct alerts (one per replica) of one notification."""
    return AlertBatch.model_validate(
        am_payload(
            *(
                am_alert(
                    alertname,
                    fingerprint=f"{tag}-{i}",
                    starts_at=(T0 + timedelta(seconds=i)).isoformat(),
                    replica=f"{tag}-{i}",
                    **labels,
                )
                for i in range(count)
            )
        )
    )


def lanes(alerts: AlertStore, *, limit: int) -> list[str]:
    return [alert_lane(r.labels) for r in alerts.pending(limit=limit)]


def test_lane_is_the_service_else_the_node_else_the_alert_name() -> None:
    assert alert_lane({"alertname": "X", "service": "web", "node": "n1"}) == "service=web"
    assert alert_lane({"alertname": "NodeDown", "node": "n1"}) == "node=n1"
    assert alert_lane({"alertname": "Watchdog"}) == "alertname=Watchdog"
    assert alert_lane({"alertname": "X", "service": ""}) == "alertname=X"


def test_a_flood_puts_one_alert_ahead_of_a_quiet_service_not_all_of_it(
    alerts: AlertStore,
) -> None:
    alerts.store_batch(batch("ServiceLatencyHigh", 300, tag="f", service="flood"), now=utcnow())
    alerts.store_batch(batch("NodeDown", 1, tag="n", node="n1"), now=utcnow())
    alerts.store_batch(batch("ServiceRequestRateHigh", 2, tag="q", service="quiet"), now=utcnow())
    # Ordered by id alone, the first 300 would all be the flood's.
    assert lanes(alerts, limit=5) == [
        "service=flood",
        "node=n1",
        "service=quiet",
        "service=flood",
        "service=quiet",
    ]
    assert lanes(alerts, limit=1000).count("service=flood") == 300


def test_within_a_lane_alerts_keep_their_arrival_order(alerts: AlertStore) -> None:
    alerts.store_batch(batch("ServiceLatencyHigh", 50, tag="a", service="web"), now=utcnow())
    alerts.store_batch(batch("ServiceLatencyHigh", 3, tag="o", service="other"), now=utcnow())
    alerts.store_batch(batch("ServiceRequestRateLow", 50, tag="b", service="web"), now=utcnow())
    web = [r for r in alerts.pending(limit=1000) if r.labels["service"] == "web"]
    assert [r.id for r in web] == sorted(r.id for r in web)
    assert [r.alertname for r in web] == ["ServiceLatencyHigh"] * 50 + [
        "ServiceRequestRateLow"
    ] * 50


def test_undecided_counts_the_given_receipts_still_waiting(alerts: AlertStore) -> None:
    intake = alerts.store_batch(
        batch("ServiceLatencyHigh", 3, tag="a", service="web"), now=utcnow()
    )
    assert len(intake.receipts) == 3 and alerts.undecided(intake.receipts) == 3
    first = alerts.pending(limit=1)[0]
    alerts.commit(now=utcnow(), receipt=first)
    assert alerts.undecided(intake.receipts) == 2
    again = alerts.store_batch(batch("ServiceLatencyHigh", 3, tag="a", service="web"), now=utcnow())
    assert again.receipts == () and again.duplicates == 3  # a retry adds nothing to wait for


def test_receipts_of_an_older_build_without_a_lane_are_decided_too(alerts: AlertStore) -> None:
    alerts.store_batch(batch("ServiceLatencyHigh", 3, tag="old", service="web"), now=utcnow())
    with alerts.store._sessions() as s, s.begin():
        s.execute(update(AlertReceiptRow).values(lane=None))
    alerts.store_batch(batch("ServiceLatencyHigh", 2, tag="new", service="web"), now=utcnow())
    got = alerts.pending(limit=10)
    assert len(got) == 5
    old = [r for r in got if r.labels["replica"].startswith("old")]
    assert [r.id for r in old] == sorted(r.id for r in old)


def test_a_store_from_before_lanes_gains_the_column_and_index_and_decides_its_backlog(
    tmp_path: Path,
) -> None:
    store = Store.in_data_dir(tmp_path)
    AlertStore(store).store_batch(
        batch("ServiceLatencyHigh", 2, tag="old", service="web"), now=utcnow()
    )
    store.close()
    db = sqlite3.connect(tmp_path / "orchestrify.db")
    with db:  # what an older build left: no migrations, no index, no lane, a backlog
        db.execute("DROP INDEX ix_alert_receipts_pending_lane")
        db.execute("ALTER TABLE alert_receipts DROP COLUMN lane")
        db.execute("DROP TABLE alembic_version")
    db.close()
    store = Store.in_data_dir(tmp_path)
    try:
        columns = {c["name"] for c in inspect(store.engine).get_columns("alert_receipts")}
        assert "lane" in columns
        alerts = AlertStore(store)
        indexes = {i["name"] for i in inspect(store.engine).get_indexes("alert_receipts")}
        assert "ix_alert_receipts_pending_lane" in indexes
        alerts.store_batch(batch("NodeDown", 1, tag="n", node="n1"), now=utcnow())
        got = alerts.pending(limit=10)
        # The old backlog is one lane (NULL) beside the new one, in arrival order.
        assert [r.labels["replica"] for r in got] == ["old-0", "n-0", "old-1"]
    finally:
        store.close()
