"""The status page's Prometheus adapter on a fake wire (httpx.MockTransport): what it
asks, how it reads an answer, every way an answer can fail, and its cache."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from orchestrify.controller.ui.prometheus import (
    MAX_ANSWER_BYTES,
    PrometheusAPI,
    RangeSeries,
    SeriesCache,
    latency_query,
    quote_label_value,
    rate_query,
)
from orchestrify.errors import MetricsUnavailable, OrchestrifyError

START = 1_700_000_000.0
STEP = 60.0
END = START + 4 * STEP  # five points
Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def matrix(*values: list[Any]) -> dict[str, Any]:
    result = [{"metric": {}, "values": v} for v in values]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def ask(handler: Handler, query: str = "up", *, timeout_s: float = 2.0) -> RangeSeries:
    api = PrometheusAPI(
        "http://prometheus.test:9090/prefix/",
        timeout_s=timeout_s,
        transport=httpx.MockTransport(handler),
    )

    async def main() -> RangeSeries:
        async with api.client() as client:
            return await api.query_range(client, query, start=START, end=END, step_s=STEP)

    return asyncio.run(main())


def failure(handler: Handler, **kw: Any) -> MetricsUnavailable:
    with pytest.raises(MetricsUnavailable) as caught:
        ask(handler, **kw)
    assert isinstance(caught.value, OrchestrifyError)  # the project's own root
    return caught.value


# --- what is asked ------------------------------------------------------------------------
def test_it_asks_query_range_with_the_range_the_step_and_a_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=matrix())

    ask(handler, 'sum(rate(x{service="web"}[2m]))')
    (request,) = seen
    assert request.method == "GET"
    assert request.url.path == "/prefix/api/v1/query_range"  # under the URL's own prefix
    params = dict(request.url.params)
    assert params == {
        "query": 'sum(rate(x{service="web"}[2m]))',
        "start": f"{START:.3f}",
        "end": f"{END:.3f}",
        "step": "60",
        "timeout": "2s",
    }


def test_the_queries_match_the_service_by_its_quoted_name_over_the_given_windows() -> None:
    assert latency_query("web-2", window="1m") == (
        "histogram_quantile(0.95, sum by (le) (rate("
        'orchestrify_http_request_duration_seconds_bucket{service="web-2"}[1m])))'
    )
    assert rate_query("web-2", window="10s") == (
        'sum(rate(orchestrify_http_requests_total{service="web-2"}[10s]))'
    )


def test_a_label_value_is_quoted_as_a_promql_string() -> None:
    assert quote_label_value("web") == '"web"'
    assert quote_label_value('a"b') == '"a\\"b"'
    assert quote_label_value("a\\b") == '"a\\\\b"'
    assert quote_label_value('x"}[1m])) or vector(1) #') == '"x\\"}[1m])) or vector(1) #"'
    assert quote_label_value("a\nb") == '"a\\nb"'


@pytest.mark.parametrize("name", ['web"} or up{x="', "Web", "-web", "", "a" * 64, "web\n"])
def test_a_name_that_is_no_service_name_never_becomes_a_query(name: str) -> None:
    with pytest.raises(ValueError, match="not a service name"):
        latency_query(name, window="1m")
    with pytest.raises(ValueError, match="not a service name"):
        rate_query(name, window="1m")


# --- reading the answer -------------------------------------------------------------------
def test_each_value_lands_on_its_step_and_missing_steps_stay_gaps() -> None:
    answer = matrix([[START, "0.05"], [START + STEP, "0.084"], [START + 3 * STEP, "0.13"]])
    series = ask(lambda _r: httpx.Response(200, json=answer))
    assert series.values == (0.05, 0.084, None, 0.13, None)
    assert series.start == START and series.step_s == STEP
    assert series.latest is None  # the last step has no sample: no value now
    assert series.peak == 0.13


@pytest.mark.parametrize("text", ["NaN", "+Inf", "-Inf"])
def test_not_a_number_samples_are_gaps(text: str) -> None:
    answer = matrix([[START, "0.1"], [START + STEP, text], [END, "0.2"]])
    series = ask(lambda _r: httpx.Response(200, json=answer))
    assert series.values == (0.1, None, None, None, 0.2)
    assert series.latest == 0.2


def test_no_series_is_a_chart_of_gaps_not_an_error() -> None:
    series = ask(lambda _r: httpx.Response(200, json=matrix()))
    assert series.values == (None,) * 5
    assert series.latest is None and series.peak is None


# --- every way it fails -------------------------------------------------------------------
def test_a_refused_connection_is_unavailable_and_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    error = failure(refuse)
    assert error.unreachable
    assert "cannot be reached" in str(error) and "prometheus.test:9090" in str(error)


def test_a_slow_answer_is_cut_at_the_timeout() -> None:
    async def slow(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=matrix())

    loop_time = asyncio.new_event_loop()
    try:
        started = loop_time.time()
        error = failure(slow, timeout_s=0.2)
        took = loop_time.time() - started
    finally:
        loop_time.close()
    assert error.unreachable
    assert "did not answer within 0.2 s" in str(error)
    assert took < 2


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (
            400,
            {"status": "error", "errorType": "bad_data", "error": 'invalid parameter "query"'},
            'Prometheus refused the query (HTTP 400): bad_data: invalid parameter "query"',
        ),
        (
            422,
            {"status": "error", "errorType": "execution", "error": "many-to-many matching"},
            "Prometheus refused the query (HTTP 422): execution: many-to-many matching",
        ),
        (
            200,
            {"status": "error", "errorType": "timeout", "error": "query timed out"},
            "Prometheus refused the query (HTTP 200): timeout: query timed out",
        ),
        (503, {"status": "error"}, "Prometheus refused the query (HTTP 503)"),
    ],
)
def test_an_error_answer_is_unavailable_with_what_prometheus_said(
    status: int, body: dict[str, Any], said: str
) -> None:
    error = failure(lambda _r: httpx.Response(status, json=body))
    assert str(error) == said
    assert not error.unreachable  # it answered: the next query is tried


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (200, b"<html>Grafana</html>"),
        (502, b"Bad Gateway"),
        (200, b'["a list"]'),
        (200, b"\xff\xfe not utf-8"),
        (200, b'{"status": "success", "data": {"resultType": "vector", "result": []}}'),
        (200, b'{"status": "success", "data": {"resultType": "matrix", "result": {}}}'),
        (200, b'{"status": "success"}'),
    ],
)
def test_an_answer_that_is_not_a_range_query_s_is_unavailable(status: int, content: bytes) -> None:
    error = failure(lambda _r: httpx.Response(status, content=content))
    assert "Prometheus" in str(error)


@pytest.mark.parametrize(
    "points",
    [
        [[START, 0.1]],  # a value that is not a string
        [[START]],
        [["now", "0.1"]],
        [[True, "0.1"]],
        [[START, "fast"]],
        "not a list",
    ],
)
def test_a_malformed_point_is_unavailable(points: Any) -> None:
    answer = {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": points}]},
    }
    failure(lambda _r: httpx.Response(200, json=answer))


def test_more_than_one_series_is_unavailable() -> None:
    answer = matrix([[START, "1"]], [[START, "2"]])
    assert "2 series, not one" in str(failure(lambda _r: httpx.Response(200, json=answer)))


def test_a_huge_answer_is_not_read_to_its_end() -> None:
    body = b"[" + b"0," * MAX_ANSWER_BYTES + b"0]"
    error = failure(lambda _r: httpx.Response(200, content=body))
    assert "larger than" in str(error)


# --- the cache ------------------------------------------------------------------------------
class FakePrometheus:
    """Answers every query with one series whose value is the number of queries asked
    so far (so a reused answer shows), or fails the way it is told."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.fail: Exception | None = None
        self.delay_s = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.params["query"])
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        end = float(request.url.params["end"])
        return httpx.Response(200, json=matrix([[end, str(len(self.asked))]]))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(fake: FakePrometheus, clock: Clock, **kw: Any) -> SeriesCache:
    api = PrometheusAPI("http://prometheus.test:9090", transport=httpx.MockTransport(fake))
    return SeriesCache(api, monotonic=clock, wall=lambda: END, range_s=4 * STEP, **kw)


def test_an_answer_is_reused_until_it_is_older_than_the_ttl() -> None:
    fake, clock = FakePrometheus(), Clock()
    charts = cache(fake, clock, ttl_s=15)

    async def main() -> list[float | None]:
        seen = []
        for advance in (0, 5, 9.9, 0.2):  # 0, 5, 14.9, then 15.1 s after the first
            clock.now += advance
            got = (await charts.get(["q"], wait_s=1))["q"]
            assert got is not None and got.series is not None and got.error is None
            seen.append(got.series.latest)
        return seen

    assert asyncio.run(main()) == [1.0, 1.0, 1.0, 2.0]
    assert fake.asked == ["q", "q"]
    assert charts.queries_sent == 2


def test_concurrent_viewers_share_one_query() -> None:
    fake, clock = FakePrometheus(), Clock()
    fake.delay_s = 0.05
    charts = cache(fake, clock)

    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(*(charts.get(["a", "b"], wait_s=1) for _ in range(10)))

    answers = asyncio.run(main())
    assert sorted(fake.asked) == ["a", "b"]
    for answer in answers:
        assert answer["a"] is not None and answer["b"] is not None


def test_queries_run_side_by_side_but_never_more_than_the_cap() -> None:
    fake, clock = FakePrometheus(), Clock()
    in_flight, peak = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json=matrix())

    api = PrometheusAPI("http://prometheus.test:9090", transport=httpx.MockTransport(handler))
    charts = SeriesCache(api, max_concurrent=3, monotonic=clock)
    del fake

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await charts.get([f"q{i}" for i in range(12)], wait_s=5)
        return loop.time() - started

    took = asyncio.run(main())
    assert peak == 3
    assert took < 12 * 0.02  # side by side: about 4 rounds, not 12 in a row


def test_without_waiting_a_stale_answer_is_given_and_refreshed_behind() -> None:
    fake, clock = FakePrometheus(), Clock()
    charts = cache(fake, clock, ttl_s=15)

    async def main() -> tuple[Any, Any, Any, Any]:
        first = (await charts.get(["q"], wait_s=0))["q"]  # nothing yet, nothing waited
        await asyncio.sleep(0.05)
        fresh = (await charts.get(["q"], wait_s=0))["q"]
        clock.now += 20
        stale = (await charts.get(["q"], wait_s=0))["q"]  # at once, the old answer
        await asyncio.sleep(0.05)
        renewed = (await charts.get(["q"], wait_s=0))["q"]
        return first, fresh, stale, renewed

    first, fresh, stale, renewed = asyncio.run(main())
    assert first is None
    assert fresh.series.latest == 1.0
    assert stale.series.latest == 1.0
    assert renewed.series.latest == 2.0
    assert fake.asked == ["q", "q"]


def test_a_page_waits_no_longer_than_it_is_told_and_the_answer_lands_later() -> None:
    fake, clock = FakePrometheus(), Clock()
    fake.delay_s = 0.3
    charts = cache(fake, clock)

    async def main() -> tuple[Any, float, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = (await charts.get(["q"], wait_s=0.05))["q"]
        waited = loop.time() - started
        await asyncio.sleep(0.4)
        return first, waited, charts.peek("q")

    first, waited, later = asyncio.run(main())
    assert first is None and waited < 0.25
    assert later is not None and later.series is not None


def test_a_failure_is_cached_too_and_an_unreachable_prometheus_is_not_asked_again_at_once() -> None:
    fake, clock = FakePrometheus(), Clock()
    fake.fail = httpx.ConnectError("Connection refused")
    charts = cache(fake, clock, ttl_s=15)

    async def main() -> tuple[Any, Any]:
        first = await charts.get(["a"], wait_s=1)
        clock.now += 1
        second = await charts.get(["a", "b"], wait_s=1)  # b: new, but Prometheus is down
        return first, second

    first, second = asyncio.run(main())
    assert fake.asked == ["a"]
    for got in (first["a"], second["a"], second["b"]):
        assert got.series is None and "cannot be reached" in got.error


def test_an_error_answer_does_not_stop_the_other_queries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["query"] == "bad":
            return httpx.Response(422, json={"status": "error", "errorType": "x", "error": "y"})
        return httpx.Response(200, json=matrix([[END, "7"]]))

    api = PrometheusAPI("http://prometheus.test:9090", transport=httpx.MockTransport(handler))
    charts = SeriesCache(api, wall=lambda: END, range_s=4 * STEP)
    got = asyncio.run(charts.get(["bad", "good"], wait_s=1))
    assert got["bad"].series is None and "HTTP 422" in got["bad"].error
    assert got["good"].series.latest == 7.0


def test_an_unexpected_error_costs_the_chart_not_the_page(caplog: pytest.LogCaptureFixture) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug")

    api = PrometheusAPI("http://prometheus.test:9090", transport=httpx.MockTransport(handler))
    got = asyncio.run(SeriesCache(api).get(["q"], wait_s=1))["q"]
    assert got.series is None and "RuntimeError" in got.error
    assert "failed unexpectedly" in caplog.text


def test_answers_nobody_asked_for_in_a_while_are_dropped() -> None:
    fake, clock = FakePrometheus(), Clock()
    charts = cache(fake, clock, ttl_s=15)

    async def main() -> None:
        await charts.get(["old"], wait_s=1)
        clock.now += 3600
        await charts.get(["new"], wait_s=1)

    asyncio.run(main())
    assert charts.peek("old") is None and charts.peek("new") is not None


def test_nan_in_a_series_never_reaches_the_cache_as_a_number() -> None:
    answer = matrix([[START, "NaN"], [END, "0.5"]])
    api = PrometheusAPI(
        "http://prometheus.test:9090",
        transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=json.dumps(answer))),
    )
    got = asyncio.run(SeriesCache(api, wall=lambda: END, range_s=4 * STEP).get(["q"], wait_s=1))[
        "q"
    ]
    assert got.series is not None
    assert all(v is None or math.isfinite(v) for v in got.series.values)
    assert got.series.values[0] is None and got.series.latest == 0.5
