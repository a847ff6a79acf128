"""`orchestrify alert ls` and `GET /v1/alerts` against a real controller (HTTP on
loopback): episodes with the decisions they led to, and a bad filter refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from bench.live import serve
from orchestrify.cli import app
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from tests.alerting.payloads import am_alert, am_payload

runner = CliRunner()
ADMIN = {"Authorization": "Bearer tok"}


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    settings = ControllerSettings(data_dir=tmp_path / "c", token="tok", join_token="j")
    with serve(create_app(settings, registry=CollectorRegistry(), run_reconciler=False)) as u:
        yield u


def cli(url: str, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--controller", url, "--token", "tok", *args])


def _post(url: str, **kw: str) -> None:
    # No such service: the rule matches and the decision is a refusal, with its reason.
    body = am_payload(am_alert("ServiceRequestRateHigh", service="ghost", **kw))
    resp = httpx.post(f"{url}/v1/alerts", json=body, headers=ADMIN)
    assert resp.status_code == 200, resp.text


def test_alert_ls_shows_each_episode_and_its_decision(url: str) -> None:
    assert "no alert received yet" in cli(url, "alert", "ls").output
    _post(url)
    _post(url, fingerprint="00000000000000aa", status="resolved")
    r = cli(url, "alert", "ls")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "ServiceRequestRateHigh" in line]
    assert len(lines) == 2
    assert "firing" in lines[0] and "resolved" in lines[1]  # firing first
    assert "service=ghost" in lines[0] and "refused" in lines[0]
    got = json.loads(cli(url, "alert", "ls", "--status", "firing", "--json").output)
    assert [e["status"] for e in got] == ["firing"]
    (decision,) = got[0]["decisions"]
    assert decision["kind"] == "decision" and decision["outcome"] == "refused"
    assert decision["data"]["alert"]["instance"] == got[0]["id"]
    assert got[0]["summary"] == "ServiceRequestRateHigh on ghost"


def test_bad_filters_are_refused_naming_the_field(url: str) -> None:
    r = cli(url, "alert", "ls", "--status", "burning")
    # One line (the controller in this process logs its own warning beside it).
    said = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and said == ["error: status: Input should be 'firing' or 'resolved'"]
    for params in ({"status": "x"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "a"}):
        resp = httpx.get(f"{url}/v1/alerts", params=params, headers=ADMIN)
        assert resp.status_code == 422, (params, resp.text)
        assert next(iter(params)) in resp.text
    assert httpx.get(f"{url}/v1/alerts").status_code == 401
