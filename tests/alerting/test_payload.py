from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from orchestrify.alerting.payload import AlertBatch, idempotency_key
from tests.alerting.payloads import am_alert, am_payload


def test_parses_alertmanager_025_payload_and_keeps_extra_fields() -> None:
    body = am_payload(am_alert("ServiceLatencyHigh", service="web", replica="web-1", node="n1"))
    body["somethingNew"] = {"x": 1}
    body["alerts"][0]["silencedBy"] = []
    batch = AlertBatch.model_validate(body)
    alert = batch.alerts[0]
    assert batch.group_key == '{}:{alertname="ServiceLatencyHigh", service="web"}'
    assert alert.alertname == "ServiceLatencyHigh"
    assert alert.starts_at == datetime(2026, 11, 21, 21, 59, 30, 123456, tzinfo=UTC)
    assert alert.fingerprint == "5bdc4b0ea7e3fa57"
    assert batch.model_extra == {"somethingNew": {"x": 1}}


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda b: b.pop("alerts"), "alerts"),
        (lambda b: b.update(version="3"), "version"),
        (lambda b: b["alerts"][0].update(status="pending"), "status"),
        (lambda b: b["alerts"][0]["labels"].pop("alertname"), "labels"),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), "startsAt"),
    ],
)
def test_malformed_payload_names_the_field(mutate, where: str) -> None:
    body = am_payload(am_alert("NodeDown", node="n1"))
    mutate(body)
    with pytest.raises(ValidationError) as err:
        AlertBatch.model_validate(body)
    assert where in str(err.value)


def test_idempotency_key_is_fingerprint_startsat_status() -> None:
    firing = AlertBatch.model_validate(am_payload(am_alert("NodeDown", node="n1"))).alerts[0]
    again = AlertBatch.model_validate(am_payload(am_alert("NodeDown", node="n1"))).alerts[0]
    resolved = AlertBatch.model_validate(
        am_payload(am_alert("NodeDown", status="resolved", node="n1"))
    ).alerts[0]
    later = AlertBatch.model_validate(
        am_payload(am_alert("NodeDown", node="n1", starts_at="2026-11-21T23:00:00Z"))
    ).alerts[0]
    assert firing.receipt_key == again.receipt_key
    assert firing.receipt_key == idempotency_key(firing.fingerprint, firing.starts_at, "firing")
    assert resolved.receipt_key != firing.receipt_key
    assert resolved.instance == firing.instance  # same episode, other end of it
    assert later.receipt_key != firing.receipt_key and later.instance != firing.instance


def test_missing_fingerprint_falls_back_to_a_stable_label_hash() -> None:
    a = am_alert("NodeDown", node="n1")
    a.pop("fingerprint")
    one = AlertBatch.model_validate(am_payload(a)).alerts[0]
    two = AlertBatch.model_validate(am_payload(dict(a))).alerts[0]
    assert one.identity and one.identity == two.identity


# Captured verbatim from prometheus-alertmanager 0.25.0 (Debian), webhook receiver.
CAPTURED_025 = (
    '{"receiver":"r","status":"resolved","alerts":[{"status":"resolved","labels":'
    '{"alertname":"ServiceLatencyHigh","node":"n1","replica":"web-1","service":"web"},'
    '"annotations":{"summary":"s"},"startsAt":"2026-11-21T22:30:07.021106034Z",'
    '"endsAt":"2026-11-21T22:30:10Z","generatorURL":"http://prom/graph",'
    '"fingerprint":"34ea01bd4fe92603"}],"groupLabels":{"alertname":"ServiceLatencyHigh",'
    '"service":"web"},"commonLabels":{"alertname":"ServiceLatencyHigh","node":"n1",'
    '"replica":"web-1","service":"web"},"commonAnnotations":{"summary":"s"},'
    '"externalURL":"http://vm:39112","version":"4","groupKey":'
    '"{}:{alertname=\\"ServiceLatencyHigh\\", service=\\"web\\"}","truncatedAlerts":0}'
)


def test_captured_alertmanager_payload() -> None:
    batch = AlertBatch.model_validate_json(CAPTURED_025)
    (alert,) = batch.alerts
    assert batch.status == alert.status == "resolved"
    assert alert.ends_at == datetime(2026, 11, 21, 22, 30, 10, tzinfo=UTC)
    assert alert.labels["replica"] == "web-1"
