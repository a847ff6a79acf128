"""The event trail (filters, since) and the Prometheus exposition."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import reconcile, register, service_spec


def test_events_filter_by_service_and_since(api: TestClient) -> None:
    api.post("/v1/services", json=service_spec("web", replicas=0, min_replicas=0))
    api.post("/v1/services", json=service_spec("api", replicas=0, min_replicas=0))
    web = api.get("/v1/events", params={"service": "web"}).json()
    assert web and {e["service"] for e in web} == {"web"}
    assert any(e["action"] == "create_service" for e in web)
    everything = api.get("/v1/events").json()
    assert {e["service"] for e in everything} >= {"web", "api"}

    assert len(api.get("/v1/events", params={"since": "1h"}).json()) == len(everything)
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert api.get("/v1/events", params={"since": future}).json() == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len(api.get("/v1/events", params={"since": past}).json()) == len(everything)

    last = everything[-1]["id"]
    assert api.get("/v1/events", params={"after": last}).json() == []


def test_since_with_an_offset_means_the_same_instant(api: TestClient) -> None:
    api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0))
    new_york = timezone(timedelta(hours=-5))
    future = (datetime.now(UTC) + timedelta(hours=1)).astimezone(new_york).isoformat()
    assert api.get("/v1/events", params={"since": future}).json() == []
    past = (datetime.now(UTC) - timedelta(hours=1)).astimezone(timezone(timedelta(hours=9)))
    assert api.get("/v1/events", params={"since": past.isoformat()}).json() != []


def test_bad_since_is_422_naming_since(api: TestClient) -> None:
    resp = api.get("/v1/events", params={"since": "yesterday-ish"})
    assert resp.status_code == 422
    (err,) = resp.json()["detail"]
    assert err["loc"] == ["query", "since"] and "since" in err["msg"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=2))
    reconcile(api)
    api.get("/v1/services")
    resp = api.get("/metrics", headers={"Authorization": ""})
    assert resp.status_code == 200
    samples = _samples(resp.text)
    assert samples[("orchestrify_nodes", (("state", "ready"),))] == 1
    assert samples[("orchestrify_nodes", (("state", "not_ready"),))] == 0
    assert samples[("orchestrify_replicas", (("service", "web"), ("state", "assigned")))] == 2
    placed = ("orchestrify_decisions_total", (("action", "place_replica"), ("outcome", "ok")))
    assert samples[placed] == 2
    count = (
        "orchestrify_api_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/services"), ("status", "200")),
    )
    assert samples[count] >= 1
