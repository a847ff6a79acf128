"""/v1/alerts and /v1/rules through the real app (TestClient), with payloads shaped as
Alertmanager 0.25 sends them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from orchestrify.controller.app import create_app
from orchestrify.controller.deps import ControllerState
from orchestrify.controller.settings import ControllerSettings
from orchestrify.store import utcnow
from tests.alerting.payloads import am_alert, am_payload

ADMIN = {"Authorization": "Bearer admin-token"}
JOIN = {"Authorization": "Bearer join-token"}


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_client(data_dir: Path, **settings: Any) -> TestClient:
    # Two apps on one database are two controllers: each its own id (the default,
    # host:port, would be the same), and a lease no busy machine lets lapse mid-test.
    settings = {"controller_id": f"test-{data_dir.name}", "lease_s": 60.0, **settings}
    app = create_app(
        ControllerSettings(
            data_dir=data_dir, token="admin-token", join_token="join-token", **settings
        ),
        registry=CollectorRegistry(),
        run_reconciler=False,  # tests drive the reconciler and the alert timer themselves
    )
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path, store_url: str) -> Iterator[TestClient]:
    """The app on each store engine (the alert decisions' one transaction on both)."""
    with make_client(tmp_path, database_url=store_url) as c:
        yield c


def state_of(c: TestClient) -> ControllerState:
    state: ControllerState = c.app.state.controller  # type: ignore[attr-defined]
    return state


def deploy(c: TestClient, *, nodes: int = 2, **spec: Any) -> list[str]:
    ids = []
    for i in range(nodes):
        r = c.post(
            "/v1/nodes/register", json={"name": f"n{i}", "address": "127.0.0.1"}, headers=JOIN
        )
        ids.append(r.json()["node_id"])
    body = {"name": "web", "image": "nginx:1", "replicas": 1, "max_replicas": 4, **spec}
    assert c.post("/v1/services", json=body, headers=ADMIN).status_code == 201
    state_of(c).reconciler.run_once()
    all_healthy(c)
    return ids


def all_healthy(c: TestClient) -> None:
    """What the agents would report once the placed replicas pass their probes."""
    for r in replicas(c):
        if r["state"] != "healthy":
            report = {"id": r["id"], "state": "healthy", "address": "127.0.0.1:1"}
            got = c.post(
                f"/v1/nodes/{r['node']}/replicas", json={"replicas": [report]}, headers=ADMIN
            )
            assert got.status_code == 204


def replicas(c: TestClient) -> list[dict[str, Any]]:
    return [r for r in c.get("/v1/replicas", headers=ADMIN).json() if r["desired"] == "run"]


def desired(c: TestClient) -> int:
    return int(c.get("/v1/services/web", headers=ADMIN).json()["replicas"])


def decisions(c: TestClient) -> list[dict[str, Any]]:
    return list(c.get("/v1/events", params={"kind": "decision"}, headers=ADMIN).json())


def post(c: TestClient, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> Any:
    return c.post("/v1/alerts", json=body, headers=headers)


def rate_high(status: str = "firing", **kw: Any) -> dict[str, Any]:
    return am_payload(am_alert("ServiceRequestRateHigh", status=status, service="web", **kw))


def test_needs_the_admin_token(client: TestClient) -> None:
    assert post(client, rate_high(), headers={}).status_code == 401
    assert post(client, rate_high(), headers={"Authorization": "Bearer nope"}).status_code == 401
    assert post(client, rate_high(), headers=JOIN).status_code == 401
    assert client.get("/v1/rules").status_code == 401


def test_malformed_body_is_422_naming_the_field_logged_and_nothing_lost(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    deploy(client)
    assert post(client, rate_high()).status_code == 200
    before = client.get("/v1/events", headers=ADMIN).json()
    bad = rate_high()
    bad["alerts"][0]["status"] = "pending"
    with caplog.at_level(logging.WARNING):
        r = post(client, bad)
    assert r.status_code == 422
    assert r.json()["message"].startswith("alerts.0.status:")
    assert any("alerts.0.status" in str(getattr(rec, "error", "")) for rec in caplog.records)
    no_labels = rate_high()
    del no_labels["alerts"][0]["labels"]["alertname"]
    r = post(client, no_labels)
    assert r.status_code == 422 and "alerts.0.labels" in r.json()["message"]
    r = client.post(
        "/v1/alerts", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert client.get("/v1/events", headers=ADMIN).json() == before
    assert desired(client) == 2


def test_alert_is_stored_as_event_decided_and_scales_out(client: TestClient) -> None:
    deploy(client)
    r = post(client, rate_high())
    assert r.status_code == 200
    assert r.json() == {"status": "stored", "received": 1, "new": 1, "duplicates": 0}
    assert desired(client) == 2
    assert len(replicas(client)) == 2  # placed at once, not at the next reconcile tick
    alerts = client.get("/v1/events", params={"kind": "alert"}, headers=ADMIN).json()
    assert alerts[-1]["data"]["fingerprint"] == "5bdc4b0ea7e3fa57"
    (d,) = decisions(client)
    assert (d["action"], d["outcome"], d["data"]["from"], d["data"]["to"]) == (
        "scale_out",
        "ok",
        1,
        2,
    )
    metrics = client.get("/metrics").text
    assert 'orchestrify_decisions_total{action="scale_out",outcome="ok"} 1.0' in metrics


def test_duplicates_and_retries_act_once(client: TestClient) -> None:
    deploy(client, policy={"cooldown_s": 0})  # not the cooldown: the key stops it
    for _ in range(3):
        assert post(client, rate_high()).status_code == 200
    assert desired(client) == 2
    assert len(decisions(client)) == 1
    dup = client.get("/v1/events", params={"kind": "alert"}, headers=ADMIN).json()
    assert [e["data"]["duplicate"] for e in dup] == [False, True, True]


def test_same_batch_from_two_alertmanagers_acts_once(client: TestClient) -> None:
    deploy(client, policy={"cooldown_s": 0})
    first = rate_high()
    second = rate_high()
    second["externalURL"] = "http://alertmanager-2:9093"
    second["receiver"] = "orchestrify-2"
    assert post(client, first).json()["new"] == 1
    assert post(client, second).json()["duplicates"] == 1
    assert desired(client) == 2


def test_resolved_before_firing_never_acts(client: TestClient) -> None:
    deploy(client, policy={"cooldown_s": 0})
    assert post(client, rate_high(status="resolved")).status_code == 200
    assert post(client, rate_high()).status_code == 200
    assert desired(client) == 1
    (d,) = decisions(client)
    assert (d["outcome"], d["reason"]) == ("refused", "already_resolved")
    state_of(client).alerts.tick()  # and the timer does not pick it up either
    assert desired(client) == 1


def test_latency_alert_places_on_another_node_than_the_slow_replica(client: TestClient) -> None:
    node_ids = deploy(client)
    (slow,) = replicas(client)
    body = am_payload(
        am_alert("ServiceLatencyHigh", service="web", replica=slow["id"], node=slow["node_name"])
    )
    assert post(client, body).status_code == 200
    new = [r for r in replicas(client) if r["id"] != slow["id"]]
    assert len(new) == 1
    assert new[0]["node"] != slow["node"] and new[0]["node"] in node_ids


def test_crash_between_store_and_act_is_processed_at_start(tmp_path: Path) -> None:
    from orchestrify.alerting.payload import AlertBatch

    with make_client(tmp_path) as c:
        deploy(c)
        # Stored, then "crash" before deciding.
        state_of(c).alerts.alerts.store_batch(AlertBatch.model_validate(rate_high()), now=utcnow())
        assert desired(c) == 1
    with make_client(tmp_path) as c:
        assert desired(c) == 2
        assert decisions(c)[-1]["outcome"] == "ok"
        assert state_of(c).alerts.alerts.pending() == []


def test_firing_alert_keeps_scaling_each_cooldown_then_scales_back_after_resolution(
    client: TestClient,
) -> None:
    deploy(client, policy={"cooldown_s": 30, "scale_down_stabilization_s": 300})
    proc = state_of(client).alerts
    clock = Clock()
    proc.clock = clock
    post(client, rate_high())
    assert desired(client) == 2
    clock.advance(10)
    proc.tick()
    assert desired(client) == 2  # cooldown
    for expect in (3, 4, 4):  # max_replicas is 4
        all_healthy(client)  # the last step's replica is up: the next may follow
        clock.advance(31)
        proc.tick()
        assert desired(client) == expect
    refusals = [d["reason"] for d in decisions(client) if d["outcome"] == "refused"]
    assert refusals == ["cooldown", "at_max"]  # each said once, not every tick
    post(client, rate_high(status="resolved"))
    clock.advance(299)
    proc.tick()
    assert desired(client) == 4  # scale-down stabilization
    clock.advance(2)
    proc.tick()
    assert desired(client) == 3
    clock.advance(10)
    proc.tick()
    assert desired(client) == 3  # cooldown between steps
    clock.advance(21)
    proc.tick()
    assert desired(client) == 2
    clock.advance(31)
    proc.tick()
    assert desired(client) == 1  # the baseline: the count before the first scale-out
    clock.advance(31)
    proc.tick()
    assert desired(client) == 1
    assert proc.alerts.policy_state("web").baseline is None


def test_rate_low_scales_in_after_stabilization_toward_min(client: TestClient) -> None:
    deploy(client, replicas=3, policy={"cooldown_s": 0, "scale_down_stabilization_s": 60})
    proc = state_of(client).alerts
    clock = Clock()
    proc.clock = clock
    starts = (clock.now - timedelta(seconds=10)).isoformat().replace("+00:00", "Z")
    body = am_payload(am_alert("ServiceRequestRateLow", service="web", starts_at=starts))
    post(client, body)
    assert desired(client) == 3
    assert decisions(client)[-1]["reason"] == "stabilization"
    clock.advance(50)
    proc.tick()
    assert desired(client) == 2
    proc.tick()
    assert desired(client) == 1
    proc.tick()
    assert desired(client) == 1
    assert decisions(client)[-1]["reason"] == "at_min"


def test_dry_run_decides_and_records_but_does_not_act(tmp_path: Path) -> None:
    with make_client(tmp_path, dry_run=True) as c:
        deploy(c)
        post(c, rate_high())
        assert desired(c) == 1
        (d,) = decisions(c)
        assert d["outcome"] == "refused" and d["reason"] == "dry_run"
        assert "would scale web from 1 to 2" in d["message"]


def test_unknown_service_and_unhealthy_replica(client: TestClient) -> None:
    deploy(client)
    post(client, am_payload(am_alert("ServiceLatencyHigh", service="ghost", fingerprint="1")))
    assert decisions(client)[-1]["reason"] == "unknown_service"
    (rep,) = replicas(client)
    body = am_payload(
        am_alert("ReplicaUnhealthy", service="web", replica=rep["id"], node="n0", fingerprint="2")
    )
    post(client, body)
    assert decisions(client)[-1]["outcome"] == "ok"
    (new,) = replicas(client)
    assert new["id"] != rep["id"] and new["node"] != rep["node"]


def test_rules_get_put_and_422(client: TestClient) -> None:
    got = client.get("/v1/rules", headers=ADMIN).json()
    assert got["source"] == "default"
    assert [r["action"] for r in got["rules"]][:2] == ["scale_out", "scale_out"]
    bad = {
        "rules": [
            {
                "name": "x",
                "matchers": ['alertname="A"'],
                "action": "run_playbook",
            }
        ]
    }
    r = client.put("/v1/rules", json=bad, headers=ADMIN)
    assert r.status_code == 422
    assert r.json()["message"] == "rules.0.playbook: run_playbook needs a playbook"
    r = client.put(
        "/v1/rules",
        json={"rules": [{"name": "x", "matchers": ["a~b"], "action": "scale_in"}]},
        headers=ADMIN,
    )
    assert r.status_code == 422 and r.json()["message"].startswith("rules.0.matchers")
    assert client.get("/v1/rules", headers=ADMIN).json() == got
    mine = {
        "rules": [{"name": "only", "matchers": ['alertname=~"Service.*"'], "action": "notify_only"}]
    }
    r = client.put("/v1/rules", json=mine, headers=ADMIN)
    assert r.status_code == 200 and r.json()["source"] == "api"
    deploy(client)
    post(client, rate_high())
    assert desired(client) == 1
    assert decisions(client)[-1]["action"] == "notify_only"


def test_rules_file_wins_at_start_and_api_rules_survive_a_restart(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "rules:\n  - name: all\n    matchers: ['alertname=~\".+\"']\n    action: notify_only\n"
    )
    with make_client(tmp_path / "a", rules_file=rules) as c:
        assert c.get("/v1/rules", headers=ADMIN).json()["rules"][0]["name"] == "all"
    with make_client(tmp_path / "b") as c:
        c.put(
            "/v1/rules",
            json={"rules": [{"name": "k", "matchers": ['a="b"'], "action": "scale_in"}]},
            headers=ADMIN,
        )
    with make_client(tmp_path / "b") as c:
        assert c.get("/v1/rules", headers=ADMIN).json()["rules"][0]["name"] == "k"


@pytest.mark.parametrize("slow_index", [0, 1])
def test_avoid_hint_decides_the_node_when_the_spread_is_a_tie(
    tmp_path: Path, slow_index: int
) -> None:
    # Two nodes with one replica each: only the avoid hint tells them apart.
    with make_client(tmp_path) as c:
        deploy(c, replicas=2)
        ordered = sorted(replicas(c), key=lambda r: r["node"])
        assert len({r["node"] for r in ordered}) == 2
        slow = ordered[slow_index]
        body = am_payload(am_alert("ServiceLatencyHigh", service="web", replica=slow["id"]))
        assert post(c, body).status_code == 200
        new = [r for r in replicas(c) if r["id"] not in {o["id"] for o in ordered}]
        assert len(new) == 1 and new[0]["node"] != slow["node"]


def test_disabled_rule_refuses_and_is_counted(client: TestClient) -> None:
    deploy(client)
    rules = {
        "rules": [
            {
                "name": "off",
                "matchers": ['alertname="ServiceRequestRateHigh"'],
                "action": "scale_out",
                "enabled": False,
            }
        ]
    }
    assert client.put("/v1/rules", json=rules, headers=ADMIN).status_code == 200
    post(client, rate_high())
    assert desired(client) == 1
    assert decisions(client)[-1]["reason"] == "rule_disabled"
    metrics = client.get("/metrics").text
    assert 'orchestrify_decisions_total{action="scale_out",outcome="refused"} 1.0' in metrics


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def latency_high(rep: dict[str, Any], *, fingerprint: str, **kw: Any) -> dict[str, Any]:
    return am_alert(
        "ServiceLatencyHigh",
        service="web",
        replica=rep["id"],
        node=rep["node_name"],
        fingerprint=fingerprint,
        **kw,
    )


def scale_by_hand(c: TestClient, replicas: int) -> None:
    """What `orchestrify service scale web=N` sends; the reconciler places at once."""
    r = c.patch("/v1/services/web", json={"replicas": replicas}, headers=ADMIN)
    assert r.status_code == 200
    state_of(c).reconciler.run_once()
    all_healthy(c)


def test_scale_out_waits_until_the_replicas_of_the_last_step_are_healthy(
    client: TestClient,
) -> None:
    deploy(client, replicas=2, max_replicas=8, policy={"cooldown_s": 30})
    proc = state_of(client).alerts
    clock = Clock()
    proc.clock = clock
    post(client, rate_high())
    assert desired(client) == 3
    assert sorted(r["state"] for r in replicas(client)) == ["assigned", "healthy", "healthy"]
    for _ in range(3):  # the alert keeps firing, cooldown after cooldown
        clock.advance(31)
        proc.tick()
        assert desired(client) == 3
    refused = [d for d in decisions(client) if d["outcome"] == "refused"]
    assert len(refused) == 1  # said once, not every tick
    assert refused[0]["reason"] == "starting"
    assert "1 replica(s) of web still starting (desired 3, healthy 2)" in refused[0]["message"]
    all_healthy(client)
    clock.advance(1)
    proc.tick()
    assert desired(client) == 4  # from the desired count: 3 + 1


def test_per_replica_latency_alerts_of_one_service_are_one_step_per_cooldown(
    client: TestClient,
) -> None:
    deploy(client, replicas=3, max_replicas=8, policy={"cooldown_s": 30})
    proc = state_of(client).alerts
    clock = Clock()
    proc.clock = clock
    a, b, c = replicas(client)
    post(client, am_payload(*(latency_high(r, fingerprint=f"slow-{r['id']}") for r in (a, b, c))))
    assert desired(client) == 4  # three slow replicas, one step
    all_healthy(client)
    clock.advance(10)  # another group notification within the cooldown: no step
    (d,) = [r for r in replicas(client) if r["id"] not in {a["id"], b["id"], c["id"]}]
    post(client, am_payload(latency_high(d, fingerprint="slow-d")))
    assert desired(client) == 4
    clock.advance(21)  # the cooldown is over: four alerts still firing, one step
    proc.tick()
    assert desired(client) == 5
    steps = [x for x in decisions(client) if x["outcome"] == "ok"]
    assert [(x["data"]["from"], x["data"]["to"]) for x in steps] == [(3, 4), (4, 5)]


def test_alerts_of_one_service_that_arrive_together_are_one_step_even_without_cooldown(
    client: TestClient,
) -> None:
    # Dry run: nothing is placed, so only the one-step rule (not "starting") stops the
    # second and third alert of the batch.
    deploy(client, replicas=3, max_replicas=8, policy={"cooldown_s": 0, "dry_run": True})
    slow = replicas(client)
    post(client, am_payload(*(latency_high(r, fingerprint=f"slow-{r['id']}") for r in slow)))
    got = decisions(client)
    assert [d["reason"] for d in got] == ["dry_run", "one_step", "one_step"]
    assert f"(replica {slow[1]['id']}): web already took its step" in got[1]["message"]
    assert "not one per replica" in got[1]["message"]
    # Stored but not yet decided (a crash, or the timer comes first): the timer decides
    # them and re-evaluates the firing ones in one run, still one step.
    from orchestrify.alerting.payload import AlertBatch

    proc = state_of(client).alerts
    again = [latency_high(r, fingerprint=f"again-{r['id']}", starts_at=iso(utcnow())) for r in slow]
    proc.alerts.store_batch(AlertBatch.model_validate(am_payload(*again)), now=utcnow())
    proc.tick()
    assert [d["reason"] for d in decisions(client)[3:]] == ["dry_run", "one_step", "one_step"]


def test_a_manual_scale_during_an_episode_is_the_baseline_that_scale_in_returns_to(
    client: TestClient,
) -> None:
    deploy(
        client,
        replicas=2,
        max_replicas=8,
        policy={"cooldown_s": 30, "scale_down_stabilization_s": 300},
    )
    proc = state_of(client).alerts
    clock = Clock()
    proc.clock = clock
    old = {"starts_at": iso(clock.now - timedelta(seconds=60))}
    post(client, rate_high(**old))
    assert desired(client) == 3
    assert proc.alerts.policy_state("web").baseline == 2
    scale_by_hand(client, 5)  # during the episode
    assert proc.alerts.policy_state("web").baseline == 5
    moved = client.get("/v1/events", params={"service": "web"}, headers=ADMIN).json()
    assert any("baseline of web moved from 2 to 5" in e["message"] for e in moved)
    # A new latency episode while the old rate alert is still firing: the timer decides
    # on the episode that may act, not on the older one.
    clock.advance(60)
    (rep, *_) = replicas(client)
    new = {"fingerprint": "new", "starts_at": iso(clock.now)}
    post(client, am_payload(latency_high(rep, **new)))
    assert desired(client) == 6
    all_healthy(client)
    clock.advance(31)
    proc.tick()
    assert desired(client) == 7
    all_healthy(client)
    post(client, rate_high(status="resolved", **old))
    assert decisions(client)[-1]["reason"] == "manual_scale"
    post(client, am_payload(latency_high(rep, status="resolved", **new)))
    for _ in range(4):
        clock.advance(301)
        proc.tick()
    assert desired(client) == 5  # back to the count set by hand, not to 2
    assert proc.alerts.policy_state("web").baseline is None


def test_a_late_notice_from_before_a_manual_scale_does_not_undo_it(client: TestClient) -> None:
    deploy(client, replicas=3, policy={"cooldown_s": 0, "scale_down_stabilization_s": 60})
    proc = state_of(client).alerts
    clock = Clock()
    proc.clock = clock
    starts = iso(clock.now - timedelta(seconds=120))
    post(client, am_payload(am_alert("ServiceRequestRateLow", service="web", starts_at=starts)))
    assert desired(client) == 2  # low load for 120 s: one step in
    # Prometheus has cleared the alert; Alertmanager has not said so yet. The owner
    # scales back up by hand, and the timer comes round 2 s later.
    scale_by_hand(client, 3)
    clock.advance(2)
    proc.tick()
    assert desired(client) == 3
    refused = decisions(client)[-1]
    assert (refused["outcome"], refused["reason"]) == ("refused", "manual_scale")
    assert "before web was scaled by hand to 3" in refused["message"]
    assert "does not act on scale" in refused["message"]
    for _ in range(3):
        clock.advance(30)
        proc.tick()
    assert desired(client) == 3
    assert [d["reason"] for d in decisions(client)].count("manual_scale") == 1  # said once
    # The late resolve changes nothing; a new episode acts after its own window.
    late = am_alert("ServiceRequestRateLow", status="resolved", service="web", starts_at=starts)
    post(client, am_payload(late))
    assert desired(client) == 3
    new = am_alert(
        "ServiceRequestRateLow", service="web", starts_at=iso(clock.now), fingerprint="again"
    )
    post(client, am_payload(new))
    assert desired(client) == 3
    assert decisions(client)[-1]["reason"] == "stabilization"
    clock.advance(61)
    proc.tick()
    assert desired(client) == 2


def test_a_decision_names_its_alert_episode_and_the_policy_state_it_met(
    client: TestClient,
) -> None:
    """ "Why did it scale": each decision event carries the alert it was decided on (name,
    status, episode) and the policy's windows as it met them (the cooldown and until when)."""
    deploy(client, policy={"cooldown_s": 30, "scale_down_stabilization_s": 300})
    proc = state_of(client).alerts
    clock = Clock()
    proc.clock = clock
    post(client, rate_high())
    clock.advance(10)
    proc.tick()  # the same episode, re-evaluated by the timer: refused, cooldown
    first, refused = decisions(client)
    assert (first["outcome"], refused["reason"]) == ("ok", "cooldown")
    for d in (first, refused):
        alert = d["data"]["alert"]
        assert (alert["name"], alert["status"], alert["service"]) == (
            "ServiceRequestRateHigh",
            "firing",
            "web",
        )
        assert alert["instance"] and alert["starts_at"]
    assert first["data"]["alert"]["instance"] == refused["data"]["alert"]["instance"]
    # The first decision met no earlier action; the refusal met the first one's cooldown.
    assert first["data"]["policy"]["last_action_at"] is None
    assert first["data"]["policy"]["cooldown_s"] == 30
    policy = refused["data"]["policy"]
    acted = datetime.fromisoformat(policy["last_action_at"])
    until = datetime.fromisoformat(policy["cooldown_until"])
    assert until - acted == timedelta(seconds=30)
    assert policy["scale_down_stabilization_s"] == 300 and policy["baseline"] == 1
    assert datetime.fromisoformat(policy["scale_in_not_before"]) > acted
