"""Hostile input at the border (issue 10): no 500 for any input, every input bounded and
valid Unicode, a known node id kept by its own agent. The real app, through HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from orchestrify.jobs.models import JobStatus
from orchestrify.store import Store
from orchestrify.store.jobs import JobStore
from tests.api.conftest import AUTH, JOIN, bearer, register, service_spec
from tests.api.test_errors import PROTECTED

SURROGATE = "\\udfff"  # as it appears in JSON text: valid JSON, not encodable as UTF-8


def _raw(api: TestClient, method: str, path: str, text: str, **kw: Any) -> Any:
    """Send ``text`` as the JSON body byte for byte (json= would refuse a surrogate)."""
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return api.request(method, path, content=text.encode(), headers=headers, **kw)


def _names(resp: Any, *field: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert any(list(field) == d["loc"][-len(field) :] for d in body["detail"]), body["detail"]
    assert ".".join(field) in body["message"]


def _alert(labels: str = '{"alertname": "Slow"}', **kw: str) -> str:
    fields = {"status": '"firing"', "labels": labels, "startsAt": '"2026-01-01T00:00:00Z"', **kw}
    inner = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    return f'{{"version": "4", "status": "firing", "alerts": [{{{inner}}}]}}'


# (method, path, JSON text with a lone surrogate, the field the 422 must name)
SURROGATES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("POST", "/v1/services", f'{{"name": "web", "image": "{SURROGATE}"}}', ("image",)),
    (
        "POST",
        "/v1/services",
        f'{{"name": "web", "image": "nginx", "env": {{"A": "x{SURROGATE}"}}}}',
        ("env", "A"),
    ),
    (
        "POST",
        "/v1/services",
        f'{{"name": "web", "image": "nginx", "labels": {{"team": "{SURROGATE}"}}}}',
        ("labels", "team"),
    ),
    ("PATCH", "/v1/services/web", f'{{"env": {{"B": "{SURROGATE}"}}}}', ("env", "B")),
    (
        "POST",
        "/v1/alerts",
        _alert(f'{{"alertname": "Slow", "service": "{SURROGATE}"}}'),
        ("alerts", "0", "labels", "service"),
    ),
    (
        "POST",
        "/v1/alerts",
        _alert(annotations=f'{{"summary": "{SURROGATE}"}}'),
        ("alerts", "0", "annotations", "summary"),
    ),
    (
        "POST",
        "/v1/jobs",
        f'{{"playbook": "site.yml", "extra_vars": {{"x": ["{SURROGATE}"]}}}}',
        ("extra_vars", "x", "0"),
    ),
    (
        "PUT",
        "/v1/rules",
        f'{{"rules": [{{"name": "r{SURROGATE}", "matchers": ["a=b"], "action": "scale_out"}}]}}',
        ("rules", "0", "name"),
    ),
    (
        "POST",
        "/v1/edges/e1/events",
        f'{{"message": "m", "data": {{"why": "{SURROGATE}"}}}}',
        ("data", "why"),
    ),
    ("POST", "/v1/edges", f'{{"name": "e{SURROGATE}"}}', ("name",)),
    (
        "POST",
        "/v1/nodes/register",
        f'{{"name": "w1", "address": "10.0.0.1", "labels": {{"zone": "{SURROGATE}"}}}}',
        ("labels", "zone"),
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "text", "field"), SURROGATES, ids=[".".join(s[3]) for s in SURROGATES]
)
def test_a_lone_surrogate_is_422_naming_the_field_and_nothing_is_stored(
    api: TestClient, method: str, path: str, text: str, field: tuple[str, ...]
) -> None:
    assert api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0)).is_success
    before = {p: api.get(p).json() for p in ("/v1/events", "/v1/jobs", "/v1/rules")}
    _names(_raw(api, method, path, text), *field)
    for listing, was in before.items():
        resp = api.get(listing)
        assert resp.status_code == 200, resp.text
        assert resp.json() == was  # nothing stored, nothing recorded


def test_a_surrogate_in_a_key_is_refused_too(api: TestClient) -> None:
    resp = _raw(
        api,
        "POST",
        "/v1/services",
        f'{{"name": "web", "image": "nginx", "env": {{"K{SURROGATE}": "v"}}}}',
    )
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][:2] == ["body", "env"]


# Only SQLite stores were written by builds from before the border (PostgreSQL is new).
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_rows_an_older_build_stored_with_a_surrogate_are_listed_escaped(
    tmp_path: Path, make_client: Callable[..., TestClient]
) -> None:
    old = Store.in_data_dir(tmp_path)  # as an older build wrote them, before the border
    # (A text column never took one; a JSON column did, escaped, and gave it back raw.)
    old.record_event("alert", kind="alert", data={"labels": {"service": "\udfff"}})
    JobStore(old).create(
        job_id="j-old", playbook="site.yml", limit=None, extra_vars={"v": "\udfff"}, reason="x"
    )
    old.close()
    api = make_client(run_reconciler=False)
    events = api.get("/v1/events")
    assert events.status_code == 200, events.text
    (ev,) = [e for e in events.json() if e["kind"] == "alert"]
    assert ev["data"]["labels"]["service"] == "\\udfff"  # the surrogate as text, not a 500
    jobs = api.get("/v1/jobs")
    assert jobs.status_code == 200, jobs.text
    assert [j["extra_vars"] for j in jobs.json() if j["id"] == "j-old"] == [{"v": "\\udfff"}]
    assert api.get("/v1/jobs", params={"status": JobStatus.PENDING}).status_code == 200


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_rules_stored_with_a_surrogate_by_an_older_build_still_list(
    tmp_path: Path, make_client: Callable[..., TestClient]
) -> None:
    from orchestrify.store.alerts import AlertStore

    old = Store.in_data_dir(tmp_path)
    bad = {"rules": [{"name": "slow", "matchers": ["service=\udfff"], "action": "scale_out"}]}
    AlertStore(old).put_rules(bad, source="api")
    old.close()
    api = make_client(run_reconciler=False)
    resp = api.get("/v1/rules")
    assert resp.status_code == 200, resp.text
    assert resp.json()["source"] == "api"
    assert resp.json()["rules"][0]["matchers"] == ["service=\\udfff"]


# --- credentials ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from orchestrify.controller.app import create_app
    from tests.api.conftest import settings

    app = create_app(settings(tmp_path_factory.mktemp("hostile")), run_reconciler=False)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_a_token_with_non_ascii_bytes_is_401_on_every_route(
    shared: TestClient, method: str, path: str
) -> None:
    url = re.sub(r"\{[^}]+\}", "x", path)
    kw: dict[str, Any] = {"json": {}} if method in {"POST", "PATCH", "PUT"} else {}
    headers = {"Authorization": "Bearer t\xe9\xff-\x80".encode("latin-1")}
    resp = shared.request(method, url, headers=headers, **kw)  # type: ignore[arg-type]
    assert resp.status_code == 401, resp.text


@pytest.mark.parametrize(
    "body",
    [b'{"name": "web"', b"\xff\xfe{}", f'{{"name": "{SURROGATE}"}}'.encode(), b"[" * 5000],
    ids=["malformed", "not-utf8", "surrogate", "deep"],
)
def test_a_bad_body_without_a_token_is_401_not_422(shared: TestClient, body: bytes) -> None:
    resp = shared.post(
        "/v1/services",
        content=body,
        headers={"Authorization": "", "content-type": "application/json"},
    )
    assert resp.status_code == 401, resp.text


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\xff\xfe{}", "unicode_invalid"),
        (("[" * 3000 + "]" * 3000).encode(), "json_too_deep"),
        (('{"a":' * 100 + "1" + "}" * 100).encode(), "json_too_deep"),
        (b'{"name": "web", "image": "nginx", "cpus": NaN}', "json_invalid"),
        (b'{"name": "web", "image": "nginx", "cpus": Infinity}', "json_invalid"),
    ],
    ids=["invalid-utf8", "deep-array", "deep-object", "nan", "infinity"],
)
def test_undecodable_or_deep_bodies_are_422_not_400(
    api: TestClient, body: bytes, kind: str
) -> None:
    resp = api.post("/v1/services", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["type"] == kind
    assert api.get("/v1/services").json() == []


# --- integers, times --------------------------------------------------------------------
BIG = 2**63


@pytest.mark.parametrize("field", ["memory_total", "cpus"])
def test_register_with_an_integer_beyond_64_bits_is_422(api: TestClient, field: str) -> None:
    resp = api.post(
        "/v1/nodes/register",
        json={"name": "w1", "address": "10.0.0.1", field: BIG},
        headers=bearer(JOIN),
    )
    _names(resp, field)
    assert api.get("/v1/nodes").json() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_total", BIG),
        ("memory_free", 10**30),
        ("disk_free", BIG),
        ("replica_count", BIG),
        ("cpu_percent", 1e300),
    ],
)
def test_heartbeat_with_an_out_of_range_figure_is_422(
    api: TestClient, field: str, value: int | float
) -> None:
    node_id, token = register(api, "w1")
    resp = api.post(f"/v1/nodes/{node_id}/heartbeat", json={field: value}, headers=bearer(token))
    _names(resp, field)
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token)).is_success


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": BIG}, "after"),
        ({"after": -1}, "after"),
        ({"since": "1e308d"}, "since"),
        ({"since": "2023-02-29"}, "since"),
        ({"since": " 15m"}, "since"),
    ],
)
def test_events_query_out_of_range_is_422(
    api: TestClient, params: dict[str, Any], field: str
) -> None:
    resp = api.get("/v1/events", params=params)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["query", field]


@pytest.mark.parametrize(
    ("since", "everything"),
    [
        ("99999999999999d", True),
        ("0001-01-01T00:00:00+01:00", True),
        ("9999-12-31T23:59:59-01:00", False),
    ],
)
def test_a_since_beyond_the_calendar_is_clamped_to_its_end(
    api: TestClient, since: str, everything: bool
) -> None:
    """The schema's pattern allows these, so they are answered (every event, or none)
    rather than refused: a schema-valid request is never a 422."""
    api.post("/v1/services", json={"name": "web", "image": "nginx:1"})
    resp = api.get("/v1/events", params={"since": since})
    assert resp.status_code == 200, resp.text
    assert (resp.json() != []) is everything


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_webhook_alert_whose_start_overflows_in_utc_is_422(api: TestClient, when: str) -> None:
    resp = _raw(api, "POST", "/v1/alerts", _alert(startsAt=f'"{when}"'))
    _names(resp, "alerts", "0", "startsAt")
    assert [e for e in api.get("/v1/events").json() if e["kind"] == "alert"] == []


# --- bounded work -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"replicas": 10**20, "max_replicas": 10**20}, "replicas"),
        ({"max_replicas": 10**20}, "max_replicas"),
        ({"replicas": 1001, "max_replicas": 1001}, "replicas"),
        ({"max_replicas": 1001}, "max_replicas"),
        ({"max_per_node": 10**20}, "max_per_node"),
        ({"memory_mb": BIG}, "memory_mb"),
    ],
)
def test_replica_counts_above_the_ceiling_are_422(
    api: TestClient, bad: dict[str, Any], field: str
) -> None:
    _names(api.post("/v1/services", json=service_spec(**bad)), field)
    assert api.get("/v1/services").json() == []


# (JSON text of a service's number, the field the 422 must name): a number too large
# for a float (Python reads it as infinity), and finite ones past the field's bound,
# which overflowed the controller's time arithmetic or the agents' Docker limits.
NUMBERS: list[tuple[str, tuple[str, ...]]] = [
    ('"cpus": 1e400', ("cpus",)),
    ('"cpus": 1e308', ("cpus",)),
    ('"drain_s": 1e400', ("drain_s",)),
    ('"policy": {"cooldown_s": 1e400}', ("policy", "cooldown_s")),
    ('"policy": {"cooldown_s": 1e308}', ("policy", "cooldown_s")),
    ('"policy": {"scale_down_stabilization_s": 1e400}', ("policy", "scale_down_stabilization_s")),
    ('"policy": {"scale_up_stabilization_s": 3601}', ("policy", "scale_up_stabilization_s")),
    ('"policy": {"latency_target_ms": 1e300}', ("policy", "latency_target_ms")),
]


@pytest.mark.parametrize(("number", "field"), NUMBERS)
def test_a_number_beyond_its_bound_is_422_and_the_services_still_list(
    api: TestClient, number: str, field: tuple[str, ...]
) -> None:
    """Before: ``1e400`` was stored as infinity and every later ``GET /v1/services`` was
    a 500. Now a 422 naming the field, on create and on update, and nothing changes."""
    assert api.post("/v1/services", json=service_spec(name="web")).status_code == 201
    before = api.get("/v1/services/web").json()
    _names(
        _raw(api, "POST", "/v1/services", f'{{"name": "api", "image": "nginx", {number}}}'), *field
    )
    _names(_raw(api, "PATCH", "/v1/services/web", f"{{{number}}}"), *field)
    listed = api.get("/v1/services")
    assert listed.status_code == 200, listed.text
    assert [s["name"] for s in listed.json()] == ["web"]
    assert api.get("/v1/services/web").json() == before


def test_the_bounds_are_in_the_openapi(api: TestClient) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    policy = schemas["ScalingPolicy"]["properties"]
    assert policy["cooldown_s"]["maximum"] == 86400
    assert policy["scale_down_stabilization_s"]["maximum"] == 3600
    cpus = schemas["ServiceSpec"]["properties"]["cpus"]["anyOf"][0]
    assert cpus["maximum"] == 1024


def test_the_ceiling_is_a_setting_and_is_in_the_openapi(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(max_replicas_per_service=5, run_reconciler=False)
    _names(api.post("/v1/services", json=service_spec(replicas=6, max_replicas=6)), "replicas")
    ok = service_spec(replicas=0, min_replicas=0, max_replicas=5)
    assert api.post("/v1/services", json=ok).status_code == 201
    _names(api.patch("/v1/services/web", json={"max_replicas": 6}), "max_replicas")
    schema = api.get("/openapi.json").json()["components"]["schemas"]["ServiceSpec"]
    assert schema["properties"]["max_replicas"]["maximum"] == 5


def test_a_body_over_the_cap_is_413_by_its_length_and_by_its_bytes(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(max_body_bytes=4096, run_reconciler=False)
    big = json.dumps(service_spec(labels={"pad": "x" * 5000})).encode()
    resp = api.post("/v1/services", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert "max_body_bytes" in resp.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"name": "web", "image": "nginx", "labels": {"pad": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}}'

    resp = api.post("/v1/services", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert api.get("/v1/services").json() == []
    # The webhook too (a 100 MB body was stored before).
    alerts = _alert(annotations=json.dumps({"pad": "y" * 5000}))
    assert _raw(api, "POST", "/v1/alerts", alerts).status_code == 413
    assert api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0)).is_success


def test_a_batch_of_more_alerts_than_the_cap_is_413_and_stores_nothing(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(max_alerts_per_batch=3, run_reconciler=False)
    alert = {
        "status": "firing",
        "labels": {"alertname": "Slow", "service": "web"},
        "startsAt": "2026-01-01T00:00:00Z",
    }

    def batch(n: int) -> dict[str, Any]:
        alerts = [{**alert, "labels": {**alert["labels"], "i": str(i)}} for i in range(n)]
        return {"version": "4", "status": "firing", "alerts": alerts}

    resp = api.post("/v1/alerts", json=batch(4))
    assert resp.status_code == 413, resp.text
    assert "max_alerts" in resp.json()["message"]
    assert [e for e in api.get("/v1/events").json() if e["kind"] == "alert"] == []
    assert api.post("/v1/alerts", json=batch(3)).json()["new"] == 3


# --- store errors -----------------------------------------------------------------------
def test_renaming_a_node_to_another_nodes_name_is_409(api: TestClient) -> None:
    register(api, "a")
    b_id, b_token = register(api, "b")
    resp = api.post(
        "/v1/nodes/register",
        json={"name": "a", "address": "10.0.0.2", "node_id": b_id, "node_token": b_token},
        headers=bearer(JOIN),
    )
    assert resp.status_code == 409, resp.text
    assert "'a'" in resp.json()["detail"]
    assert api.get(f"/v1/nodes/{b_id}").json()["name"] == "b"


TOKEN = "t" * 40  # a token the agent picked (at least 32 characters)


def test_a_new_node_id_that_is_another_nodes_name_is_409(api: TestClient) -> None:
    """Every command takes a node by id or by name: a node whose id is another's name
    would make ``node drain w1`` act on the wrong one. Refused, nothing stored."""
    a_id, _ = register(api, "w1")
    resp = api.post(
        "/v1/nodes/register",
        json={"name": "w2", "address": "10.0.0.2", "node_id": "w1", "node_token": TOKEN},
        headers=bearer(JOIN),
    )
    assert resp.status_code == 409, resp.text
    assert "node id 'w1' is the name of another node" in resp.json()["detail"]
    assert [n["name"] for n in api.get("/v1/nodes").json()] == ["w1"]
    assert api.get("/v1/nodes/w1").json()["id"] == a_id


def test_a_name_that_is_another_nodes_id_is_409_new_or_renamed(api: TestClient) -> None:
    a_id, _ = register(api, "w1")
    b_id, b_token = register(api, "w2")
    resp = api.post(
        "/v1/nodes/register", json={"name": a_id, "address": "10.0.0.3"}, headers=bearer(JOIN)
    )
    assert resp.status_code == 409, resp.text
    assert f"node name {a_id!r} is the id of another node" in resp.json()["detail"]
    renamed = api.post(
        "/v1/nodes/register",
        json={"name": a_id, "address": "10.0.0.2", "node_id": b_id, "node_token": b_token},
        headers=bearer(JOIN),
    )
    assert renamed.status_code == 409, renamed.text
    assert sorted(n["name"] for n in api.get("/v1/nodes").json()) == ["w1", "w2"]
    # A node whose id is its own name is no ambiguity.
    same = api.post(
        "/v1/nodes/register",
        json={"name": "w3", "address": "10.0.0.4", "node_id": "w3", "node_token": TOKEN},
        headers=bearer(JOIN),
    )
    assert same.status_code == 200, same.text


def test_a_store_that_cannot_write_is_503_with_retry_after(api: TestClient) -> None:
    engine = api.app.state.controller.store.engine  # type: ignore[attr-defined]

    def locked(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            # The engine's own driver error (sqlite3's or psycopg's), as a lock gives it.
            raise engine.dialect.dbapi.OperationalError("database is locked")

    event.listen(engine, "before_cursor_execute", locked)
    try:
        resp = api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0))
    finally:
        event.remove(engine, "before_cursor_execute", locked)
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "1"
    assert "database is locked" in resp.json()["message"]
    # The connection and the store are fine afterwards.
    assert api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0)).is_success


def test_a_genuine_bug_is_a_json_500_that_names_no_internals(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = make_client(run_reconciler=False)
    api._transport.raise_server_exceptions = False  # type: ignore[attr-defined]
    store = api.app.state.controller.store  # type: ignore[attr-defined]

    def broken(**_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "list_services", broken)
    resp = api.get("/v1/services")
    assert resp.status_code == 500
    assert "RuntimeError" in resp.json()["message"]


# --- node identity ----------------------------------------------------------------------
def _reregister(api: TestClient, node_id: str, *, token: str = JOIN, **kw: Any) -> Any:
    body = {"name": "w1", "address": "10.0.0.66", "node_id": node_id, **kw}
    return api.post("/v1/nodes/register", json=body, headers=bearer(token))


def test_a_known_node_id_needs_its_own_token_to_register_again(api: TestClient) -> None:
    node_id, token = register(api, "w1")
    for attempt in ({}, {"node_token": "guessed-" * 6}):
        resp = _reregister(api, node_id, **attempt)
        assert resp.status_code == 409, resp.text
        assert "node token" in resp.json()["detail"]
    # Nothing was taken over: the real agent's token still works, the address is kept.
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token)).is_success
    assert api.get(f"/v1/nodes/{node_id}").json()["address"] == "127.0.0.1"
    refused = [
        e
        for e in api.get("/v1/events", params={"kind": "node"}).json()
        if e["outcome"] == "refused"
    ]
    # One event for both: refusals of one name are recorded at most once a minute.
    assert len(refused) == 1 and refused[0]["data"]["address"] == "10.0.0.66"
    assert refused[0]["reason"] == "node_token"
    # Its own agent, presenting its saved token, registers again.
    again = _reregister(api, node_id, node_token=token)
    assert again.status_code == 200 and again.json()["known"] is True
    # The admin may re-register any node.
    assert _reregister(api, node_id, token=AUTH["Authorization"].split()[1]).status_code == 200


def test_an_unknown_node_id_still_registers_with_the_join_token_alone(api: TestClient) -> None:
    saved = "saved-by-an-agent-of-a-wiped-store-0123456789"
    resp = _reregister(api, "0123456789ab", node_token=saved)
    assert resp.status_code == 200 and resp.json()["known"] is False
    # The node is made under that id with the token it presented (its agent keeps both).
    assert resp.json()["node_id"] == "0123456789ab" and resp.json()["node_token"] == saved


# --- contract ---------------------------------------------------------------------------
def test_delete_node_answers_json_matching_its_schema(api: TestClient) -> None:
    """A node with nothing on it is forgotten at once: 200 with the NodeRemoval body its
    schema promises, and a GET of it is a 404 from then on (no 202 with a node that
    lingers, which a client cannot tell from one that stayed)."""
    a, _ = register(api, "a")
    resp = api.delete(f"/v1/nodes/{a}")
    assert resp.status_code == 200, resp.text
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    removal = resp.json()
    assert set(schemas["NodeRemoval"]["required"]) <= set(removal)
    assert removal["node"] == a and removal["removed"] is True
    assert api.get(f"/v1/nodes/{a}").status_code == 404
    b, _ = register(api, "b")
    forced = api.delete(f"/v1/nodes/{b}", params={"force": True})
    assert forced.status_code == 200 and forced.json()["removed"] is True
    spec = api.get("/openapi.json").json()["paths"]["/v1/nodes/{node_id}"]["delete"]
    assert spec["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NodeRemoval"
    }
    assert {"404", "409"} <= set(spec["responses"])
    assert "202" not in spec["responses"] and "204" not in spec["responses"]


def test_the_openapi_documents_the_error_statuses(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path, ops in paths.items():
        if path in {"/healthz", "/metrics"}:
            continue
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "422", "503"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method != "get":
                assert {"409", "413"} <= codes, (method, path)
    assert "409" in paths["/v1/nodes/register"]["post"]["responses"]
