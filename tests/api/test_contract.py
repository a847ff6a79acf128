"""The OpenAPI is exactly as narrow as the code: each fix schemathesis led to, one by one.

(tests/api/test_schemathesis_contract.py runs schemathesis itself against a real process.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrify.jobs.runner import JobRunner
from orchestrify.models import IMAGE_REF, JSON_INT_MAX, SERVICE_NAME
from tests.api.conftest import bearer, register, service_spec, wait_for

RESOURCE_PATHS = [
    ("/v1/services", {"GET", "POST"}),
    ("/v1/services/web", {"GET", "PATCH", "DELETE"}),
    ("/v1/edges", {"GET", "POST"}),
    ("/v1/jobs", {"GET", "POST"}),
    ("/v1/rules", {"GET", "PUT"}),
    ("/v1/nodes/abc", {"GET", "DELETE"}),
    ("/v1/nodes/register", {"POST"}),  # not GET/DELETE of a node named "register"
]


def _schemas(api: TestClient) -> dict[str, Any]:
    schemas: dict[str, Any] = api.get("/openapi.json").json()["components"]["schemas"]
    return schemas


# --- 405 and Allow ------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "methods"), RESOURCE_PATHS)
def test_a_405_lists_every_method_of_the_path_in_allow(
    api: TestClient, path: str, methods: set[str]
) -> None:
    """Starlette listed only the first matching route's methods (Allow: POST on a path that
    also serves GET); RFC 9110 wants every one."""
    resp = api.options(path)
    assert resp.status_code == 405, resp.text
    allowed = {m.strip() for m in resp.headers["allow"].split(",")}
    assert allowed - {"HEAD"} == methods
    assert resp.json()["detail"] == "Method Not Allowed"


def test_the_agents_routes_are_matched_first(api: TestClient) -> None:
    """A request is matched against the app's routes in order; a fleet's heartbeats,
    long-polls and reports are most of the requests, so they come before every other
    route (a router included before the nodes' one would make each of them test its
    routes first)."""
    from fastapi.routing import APIRoute

    from orchestrify.controller.routers import nodes

    # FastAPI matches the app's own routes (the docs), then each included router in turn.
    included = [r for r in api.app.router.routes if hasattr(r, "original_router")]  # type: ignore[attr-defined]
    assert included and included[0].original_router is nodes.router
    first = [(sorted(r.methods), r.path) for r in nodes.router.routes if isinstance(r, APIRoute)]
    assert first[:3] == [
        (["POST"], "/v1/nodes/{node_id}/heartbeat"),
        (["GET"], "/v1/nodes/{node_id}/assignments"),
        (["POST"], "/v1/nodes/{node_id}/replicas"),
    ]


def test_the_agents_routes_resolve_one_dependency_for_the_node_check_and_the_state() -> None:
    """FastAPI's work per dependency it resolves was most of a heartbeat's CPU: the node
    check and the state are one dependency (``node_state``) over the bearer credentials,
    not a route dependency beside ``State``: with the routers' own query check, 3 are
    resolved per request instead of 5."""
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from orchestrify.controller.deps import node_state
    from orchestrify.controller.routers import nodes

    def resolved(d: Dependant) -> list[str]:
        return [name for sub in d.dependencies for name in [sub.name or "", *resolved(sub)]]

    agents = [r for r in nodes.router.routes if isinstance(r, APIRoute)][:3]
    for route in agents:
        calls = [d.call for d in route.dependant.dependencies]
        assert node_state in calls, route.path
        assert len(resolved(route.dependant)) == 3, (route.path, resolved(route.dependant))


# --- validators stated in the schema -------------------------------------------------------
def test_the_schema_states_the_service_name_and_image_patterns(api: TestClient) -> None:
    spec = _schemas(api)["ServiceSpec"]["properties"]
    assert spec["name"]["pattern"] == SERVICE_NAME.pattern
    assert spec["image"]["pattern"] == IMAGE_REF.pattern
    assert spec["image"]["maxLength"] == 255
    assert spec["env"]["propertyNames"]["pattern"].startswith("^[A-Za-z_]")
    assert (spec["port"]["minimum"], spec["port"]["maximum"]) == (1, 65535)
    assert "pattern" in spec["health_path"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "web\n", "image": "nginx:1"},  # Python's $ let a trailing newline through
        {"name": "web", "image": ""},
        {"name": "web", "image": "nginx:tagé"},  # a Docker tag is ASCII
        {"name": "web", "image": "nginx", "health_path": "/a b"},
        {"name": "web", "image": "nginx", "port": 0},
    ],
)
def test_what_the_patterns_refuse_is_422(api: TestClient, body: dict[str, Any]) -> None:
    resp = api.post("/v1/services", json=body)
    assert resp.status_code == 422, resp.text


def test_the_alertmanager_version_and_alertname_are_in_the_schema(api: TestClient) -> None:
    schemas = _schemas(api)
    assert schemas["AlertBatch"]["properties"]["version"]["const"] == "4"
    labels = schemas["AlertmanagerAlert"]["properties"]["labels"]
    assert labels["required"] == ["alertname"]
    assert labels["properties"]["alertname"]["minLength"] == 1


def test_rule_matchers_and_run_playbook_needs_are_in_the_schema(api: TestClient) -> None:
    rule = _schemas(api)["AlertRule"]
    pattern = rule["properties"]["matchers"]["items"]["pattern"]
    assert re.search(pattern, 'service=~"web-.*"') and not re.search(pattern, "")
    assert rule["then"]["required"] == ["playbook"]


def test_integers_are_bounded_by_the_json_safe_range(api: TestClient) -> None:
    """2**63 - 1 and 2**63 are one float to a JSON tool, so a bound there let the tool
    send 2**63 + 191 as valid; 2**53 - 1 is exact everywhere."""
    heartbeat = _schemas(api)["Heartbeat"]["properties"]["memory_total"]["anyOf"][0]
    assert heartbeat["maximum"] == JSON_INT_MAX == 2**53 - 1
    node_id, token = register(api, "w1")
    url = f"/v1/nodes/{node_id}/heartbeat"
    assert api.post(url, json={"memory_total": JSON_INT_MAX}, headers=bearer(token)).is_success
    too_big = api.post(url, json={"memory_total": JSON_INT_MAX + 1}, headers=bearer(token))
    assert too_big.status_code == 422


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("replica_count", "5", False),  # a string is not a JSON integer
        ("replica_count", True, False),
        ("replica_count", 5.5, False),
        ("replica_count", 5.0, True),  # JSON Schema's integer takes 5.0
        ("cpu_percent", 5, True),  # an integer is a JSON number
        ("cpu_percent", "5", False),
    ],
)
def test_request_fields_take_exactly_their_json_type(
    api: TestClient, field: str, value: Any, ok: bool
) -> None:
    node_id, token = register(api, "w1")
    resp = api.post(f"/v1/nodes/{node_id}/heartbeat", json={field: value}, headers=bearer(token))
    assert resp.is_success is ok, resp.text


def test_a_time_given_as_a_number_is_422(api: TestClient) -> None:
    """pydantic would read 0 as 1970-01-01 (Unix seconds); the schema says a string."""
    resp = api.post("/v1/edges", json={"name": "e1", "applied_as_of": 0})
    assert resp.status_code == 422, resp.text
    ok = api.post("/v1/edges", json={"name": "e1", "applied_as_of": "2026-01-01T00:00:00Z"})
    assert ok.status_code == 200, ok.text


def test_since_states_its_pattern(api: TestClient) -> None:
    params = api.get("/openapi.json").json()["paths"]["/v1/events"]["get"]["parameters"]
    (since,) = [p for p in params if p["name"] == "since"]
    pattern = since["schema"]["pattern"]
    for good in ("15m", "1.5h", "2026-05-01", "2026-05-01T12:00", "2024-02-29T00:00:00.5Z"):
        assert re.search(pattern, good), good
        assert api.get("/v1/events", params={"since": good}).status_code == 200
    for bad in ("2023-02-29", "2026-13-01", "yesterday", "15 m"):
        assert not re.search(pattern, bad), bad
        assert api.get("/v1/events", params={"since": bad}).status_code == 422


def test_registration_address_is_a_host_as_the_schema_says(api: TestClient) -> None:
    body = {"name": "w1", "address": "bad host/x"}
    resp = api.post("/v1/nodes/register", json=body, headers=bearer("join-secret"))
    assert resp.status_code == 422, resp.text
    pattern = _schemas(api)["NodeRegistration"]["properties"]["address"]["pattern"]
    assert not re.search(pattern, body["address"])


# --- statuses documented -------------------------------------------------------------------
def test_every_operation_documents_426_and_its_auth_and_body_errors(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path, item in paths.items():
        for method, op in item.items():
            assert "426" in op["responses"], (method, path)
            if path.startswith("/v1/"):
                assert {"413", "422", "503"} <= set(op["responses"]), (method, path)


def test_a_replica_filter_naming_no_node_is_a_documented_404(api: TestClient) -> None:
    resp = api.get("/v1/replicas", params={"node": "nope"})
    assert resp.status_code == 404
    op = api.get("/openapi.json").json()["paths"]["/v1/replicas"]["get"]
    assert "404" in op["responses"]


# --- removal semantics: a DELETE leaves nothing to GET ---------------------------------------
def test_stopping_a_replica_is_an_action_and_delete_is_not_served(api: TestClient) -> None:
    register(api, "w1")
    api.post("/v1/services", json=service_spec(replicas=1))

    (rep,) = wait_for(lambda: api.get("/v1/replicas").json(), what="a replica placed")
    assert api.delete(f"/v1/replicas/{rep['id']}").status_code == 405
    stopped = api.post(f"/v1/replicas/{rep['id']}/stop")
    assert stopped.status_code == 202 and stopped.json()["desired"] in ("drain", "stop")
    # Still there while it stops: that is why it is not a DELETE.
    assert api.get(f"/v1/replicas/{rep['id']}").status_code == 200


# --- jobs ------------------------------------------------------------------------------------
def test_the_openapi_lists_the_playbooks_a_job_may_name(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    playbooks = tmp_path / "pb"
    (playbooks / "sub").mkdir(parents=True)
    (playbooks / "ping.yml").write_text("- hosts: all\n  tasks: []\n")
    (playbooks / "sub" / "deep.yaml").write_text("- hosts: all\n  tasks: []\n")
    (playbooks / ".hidden.yml").write_text("")
    (playbooks / "notes.txt").write_text("")
    api = make_client(playbook_dir=playbooks)
    prop = _schemas(api)["JobRequest"]["properties"]["playbook"]
    assert prop["enum"] == ["ping.yml", "sub/deep.yaml"]
    (playbooks / "new.yml").write_text("- hosts: all\n  tasks: []\n")
    assert "new.yml" in _schemas(api)["JobRequest"]["properties"]["playbook"]["enum"]


def test_job_limit_and_extra_var_names_are_in_the_schema(api: TestClient) -> None:
    props = _schemas(api)["JobRequest"]["properties"]
    assert props["limit"]["minLength"] == 1 and "pattern" in props["limit"]
    names = props["extra_vars"]["propertyNames"]
    assert re.search(names["pattern"], "version")
    assert "hostvars" in names["not"]["anyOf"][1]["enum"]
    assert re.search(names["not"]["anyOf"][0]["pattern"], "ANSIBLE_host")


def test_running_jobs_are_capped_and_the_queue_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs on disjoint hosts used to start at once without bound (one ansible-playbook
    each); now at most max_running run, and past max_pending a submission is Busy."""
    import threading

    from orchestrify.errors import Busy
    from orchestrify.jobs import hosts as hosts_module
    from orchestrify.jobs import runner as runner_module
    from orchestrify.jobs.models import JobStatus
    from orchestrify.store import Store

    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "ping.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "inv.ini").write_text("a\nb\nc\n")
    inventory = hosts_module.Inventory(groups={}, hosts={"a", "b", "c"})
    monkeypatch.setattr(runner_module, "read_inventory", lambda _path: inventory)
    release = threading.Event()
    started: list[str] = []

    def fake_run(self: JobRunner, job: Any, cancel: threading.Event) -> Any:
        started.append(job.id)
        release.wait(30)
        return JobStatus.SUCCESSFUL, 0, None, None

    monkeypatch.setattr(JobRunner, "_run_playbook", fake_run)
    store = Store.in_data_dir(tmp_path / "data", node_timeout_s=15)
    jobs = JobRunner(
        store,
        playbook_dir=tmp_path / "pb",
        inventory=tmp_path / "inv.ini",
        jobs_dir=tmp_path / "jobs",
        max_running=1,
        max_pending=2,
    )
    jobs.lead()
    try:
        first = jobs.submit(playbook="ping.yml", limit="a")
        wait_for(lambda: started == [first.id], what="the first job running")
        jobs.submit(playbook="ping.yml", limit="b")
        jobs.submit(playbook="ping.yml", limit="c")
        with pytest.raises(Busy):
            jobs.submit(playbook="ping.yml", limit="c")
        # b and c touch other hosts than a, yet wait: one job at a time.
        assert jobs.get(first.id).status == JobStatus.RUNNING
        assert [j.status for j in jobs.list_jobs(status=JobStatus.PENDING)] == [
            JobStatus.PENDING
        ] * 2
        assert started == [first.id]
        release.set()
        wait_for(
            lambda: len(jobs.list_jobs(status=JobStatus.SUCCESSFUL)) == 3, what="all three done"
        )
    finally:
        release.set()
        jobs.close()
        store.close()


def test_a_full_job_queue_is_a_documented_429(api: TestClient) -> None:
    op = api.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]
    assert "429" in op["responses"]


def test_links_from_a_created_service_name_real_operations(api: TestClient) -> None:
    """The stateful phase (and any client) follows them: a renamed route must not leave
    a link to an operation that no longer exists."""
    paths = api.get("/openapi.json").json()["paths"]
    ids = {op["operationId"] for item in paths.values() for op in item.values()}
    links = paths["/v1/services"]["post"]["responses"]["201"]["links"]
    assert {"GetService", "RollbackService"} <= set(links)
    assert {link["operationId"] for link in links.values()} <= ids


@pytest.mark.parametrize(
    ("pattern_of", "text"),
    [
        ("health_path", "/\u00e5\u0085"),  # \u0085 is a space to Python's \s, not to ECMA's
        ("matcher", "a=x\u0085y"),
        ("matcher", 'a="\\\ry"'),  # "." takes \r in Python, not in ECMA
    ],
)
def test_patterns_mean_the_same_to_python_and_to_json_schema(
    api: TestClient, pattern_of: str, text: str
) -> None:
    """The code and the schema decide alike on characters where Python's regex and
    ECMA-262 (JSON Schema's) differ: no class shorthand in a pattern both read."""
    schemas = _schemas(api)
    if pattern_of == "health_path":
        pattern = schemas["ServiceSpec"]["properties"]["health_path"]["pattern"]
        body = {"name": "web", "image": "nginx", "health_path": text}
        code_ok = api.post("/v1/services", json=body).status_code == 201
    else:
        pattern = schemas["AlertRule"]["properties"]["matchers"]["items"]["pattern"]
        body = {"rules": [{"name": "r", "matchers": [text], "action": "notify_only"}]}
        code_ok = api.put("/v1/rules", json=body).status_code == 200
    assert "\\s" not in pattern and "\\S" not in pattern and "\\." not in pattern
    assert bool(re.search(pattern, text)) is code_ok


# --- query parameters ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("timeout=1&timeout=2", "timeout"),  # which one? FastAPI took the last
        ("version=0.0&timeout=0", "version"),  # Python's int() takes 0.0, JSON's integer not
        ("version=1_000&timeout=0", "version"),
        ("version=%205&timeout=0", "version"),
    ],
)
def test_a_query_parameter_given_twice_or_an_integer_not_written_as_one_is_422(
    api: TestClient, query: str, field: str
) -> None:
    resp = api.get(f"/v1/upstreams?{query}")
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["query", field]
    assert resp.json()["message"].startswith(f"{field}: ")


def test_a_query_problem_without_credentials_is_a_401(api: TestClient) -> None:
    resp = api.get("/v1/upstreams?timeout=1&timeout=2", headers={"Authorization": ""})
    assert resp.status_code == 401, resp.text


def test_plain_integer_queries_still_work(api: TestClient) -> None:
    assert api.get("/v1/upstreams?version=-1&timeout=0").status_code == 200
    assert api.get("/v1/events?after=3&limit=5").status_code == 200


@pytest.mark.parametrize("value", ["0", "1700000000", "2026-11-30T12:00:00", "2026-11-30"])
def test_a_time_in_a_body_is_rfc3339_text_with_its_offset(api: TestClient, value: str) -> None:
    """schemathesis' random seed 148381368: "0" was read as Unix seconds (1970) and kept."""
    resp = api.post("/v1/edges", json={"name": "e1", "applied_as_of": value})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"][-1] == "applied_as_of"
    ok = api.post("/v1/edges", json={"name": "e1", "applied_as_of": "2026-11-30T12:00:00.5+01:00"})
    assert ok.status_code == 200, ok.text
