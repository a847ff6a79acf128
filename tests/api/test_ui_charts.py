"""The services pages' Prometheus charts through the app: none without a Prometheus, a
note (and still a page) when it does not answer, the charts when it does, and live polls
that take them from the cache without waiting for Prometheus; on both store engines."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.net import free_port
from orchestrify.controller.ui.charts import ChartSource
from orchestrify.controller.ui.prometheus import PrometheusAPI, SeriesCache
from tests.api.test_ui import CSP, _signed_in
from tests.api.test_ui_services import _create

FAKE_URL = "http://prometheus.test:9090"


def _no_chart(text: str) -> None:
    assert "<svg" not in text and "chart" not in text and "Prometheus" not in text


def test_without_a_prometheus_no_page_shows_a_chart(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    _create(api)
    browser = _signed_in(api)
    for path in ("/ui/services", "/ui/services/web", "/ui/live/services", "/ui/live/services/web"):
        resp = browser.get(path)
        assert resp.status_code == 200, path
        _no_chart(resp.text)
    listing = browser.get("/ui/services").text
    assert listing.count('<th scope="col"') == 7  # the columns as before


def test_an_unreachable_prometheus_is_a_note_on_a_page_that_still_answers(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False, prometheus_url=f"http://127.0.0.1:{free_port()}")
    _create(api)
    browser = _signed_in(api)
    started = time.monotonic()
    listing = browser.get("/ui/services")
    assert time.monotonic() - started < 5
    assert listing.status_code == 200
    assert listing.headers["content-security-policy"] == CSP
    assert '<th scope="col">p95 latency, last hour</th>' in listing.text
    assert listing.text.count("Prometheus did not answer") == 2  # both charts of web
    assert "<svg" not in listing.text
    detail = browser.get("/ui/services/web")
    assert detail.status_code == 200
    assert '<section id="service-charts"' in detail.text
    assert "Prometheus did not answer: Prometheus at http://127.0.0.1:" in detail.text
    assert "cannot be reached" in detail.text
    for path in ("/ui/live/services", "/ui/live/services/web"):
        live = browser.get(path)
        assert live.status_code == 200 and "Prometheus did not answer" in live.text


class FakePrometheus:
    """A Prometheus on a fake wire: a p95 of 84 ms and 0.25 requests/s now, a gap
    before; ``delay_s`` makes it slow."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.delay_s = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        self.asked.append(query)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        end = float(request.url.params["end"])
        value = "0.084" if query.startswith("histogram_quantile") else "0.25"
        points = [[end - 180, "0.13"], [end - 120, "NaN"], [end - 60, value], [end, value]]
        body = {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {}, "values": points}]},
        }
        return httpx.Response(200, json=body)


def _faked(
    make_client: Callable[..., TestClient], **cache: Any
) -> tuple[TestClient, FakePrometheus, SeriesCache]:
    api = make_client(run_reconciler=False, prometheus_url=FAKE_URL)
    fake = FakePrometheus()
    series = SeriesCache(PrometheusAPI(FAKE_URL, transport=httpx.MockTransport(fake)), **cache)
    app: Any = api.app
    app.state.ui_charts = ChartSource(
        owner=app.state.controller, cache=series, latency_window="1m", rate_window="2m"
    )
    return api, fake, series


def test_the_pages_chart_each_service_against_its_lines(
    make_client: Callable[..., TestClient],
) -> None:
    api, fake, _ = _faked(make_client)
    _create(
        api, policy={"latency_target_ms": 100, "requests_per_replica": 30, "request_window_s": 60}
    )
    browser = _signed_in(api)
    listing = browser.get("/ui/services").text
    assert sorted(fake.asked) == [
        "histogram_quantile(0.95, sum by (le) (rate("
        'orchestrify_http_request_duration_seconds_bucket{service="web"}[1m])))',
        'sum(rate(orchestrify_http_requests_total{service="web"}[2m]))',
    ]
    assert listing.count("<svg") == 2 and 'class="chart chart-small"' in listing
    assert "now <strong>84 ms</strong>" in listing
    assert "dashed line: target 100 ms" in listing
    assert "now <strong>0.25/s</strong>" in listing
    assert "dashed line: scale-out above 0/s" in listing  # no healthy replica yet
    assert (
        '<title id="chart-web-latency-chart-small-title">p95 latency, last hour: now 84 ms, '
        "max 130 ms; target 100 ms</title>"
    ) in listing
    assert "style=" not in listing and "<script>" not in listing
    detail = browser.get("/ui/services/web").text
    assert detail.count("<svg") == 2 and 'class="chart chart-large"' in detail
    assert "(30 requests per 60 s per healthy replica, 0 healthy)" in detail
    assert len(fake.asked) == 2  # the service page took the list's answers


def test_live_polls_take_the_cached_charts_and_never_wait_for_prometheus(
    make_client: Callable[..., TestClient],
) -> None:
    api, fake, series = _faked(make_client, ttl_s=0.5)
    _create(api)
    browser = _signed_in(api)
    assert browser.get("/ui/services/web").text.count("<svg") == 2
    assert series.queries_sent == 2
    live = browser.get("/ui/live/services/web")  # at once: it is behind (no version)
    assert '<section id="service-charts"' in live.text and live.text.count("<svg") == 2
    assert series.queries_sent == 2  # fresh: from the cache
    # Stale now, and Prometheus slow: the poll answers with the old charts at once and
    # the refresh happens behind it.
    time.sleep(0.6)
    fake.delay_s = 1.5
    for path in ("/ui/live/services/web", "/ui/live/services"):
        started = time.monotonic()
        live = browser.get(path)
        assert time.monotonic() - started < 1.0, path
        assert live.status_code == 200 and live.text.count("<svg") == 2
        assert "now <strong>84 ms</strong>" in live.text


def test_a_new_service_s_charts_in_a_live_poll_wait_for_the_next_one(
    make_client: Callable[..., TestClient],
) -> None:
    api, fake, _ = _faked(make_client)
    browser = _signed_in(api)
    assert browser.get("/ui/services").status_code == 200
    _create(api, "late")
    fake.delay_s = 0.3
    live = browser.get("/ui/live/services")
    assert "Prometheus has not answered yet" in live.text and "<svg" not in live.text
    time.sleep(0.6)
    assert browser.get("/ui/live/services").text.count("<svg") == 2


@pytest.mark.parametrize("path", ["/ui/services", "/ui/services/web"])
def test_a_slow_prometheus_delays_a_page_by_its_wait_at_most(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    from orchestrify.controller.ui import routes

    monkeypatch.setattr(routes, "PAGE_WAIT_S", 0.3)
    api, fake, _ = _faked(make_client)
    fake.delay_s = 1.5
    _create(api)
    browser = _signed_in(api)
    started = time.monotonic()
    page = browser.get(path)
    assert time.monotonic() - started < 1.2
    assert page.status_code == 200 and "Prometheus has not answered yet" in page.text


def test_a_name_that_cannot_be_queried_is_a_note_not_a_failed_page(
    make_client: Callable[..., TestClient],
) -> None:
    """The store only holds service names; a name outside the pattern, were one there,
    is never put into a query."""
    api, fake, _ = _faked(make_client)
    source: Any = api.app.state.ui_charts  # type: ignore[attr-defined]
    fetch = functools.partial(source.fetch, ["web", 'x"} or up{'], wait_s=0.5)
    got = api.portal.call(fetch)  # type: ignore[attr-defined]
    assert got['x"} or up{'][0].error == "not a service name that can be queried"
    assert all('x"' not in query for query in fake.asked)
    assert got["web"][0] is not None and got["web"][0].series is not None
