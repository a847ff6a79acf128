"""Prometheus as the status page's charts read it: range queries over its HTTP API
(``GET /api/v1/query_range``), every answer translated at this border into a
``RangeSeries`` or a ``MetricsUnavailable``, and cached briefly per query
(``SeriesCache``), so a refresh, many viewers and the live polls cost Prometheus one
query per chart every ``CACHE_TTL_S``.

Nothing a request says goes into a query: the only variable part is a service name that
matched ``SERVICE_NAME``, quoted as a PromQL string (``quote_label_value``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrify import clock
from orchestrify.errors import MetricsUnavailable
from orchestrify.models import SERVICE_NAME

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_TTL_S",
    "CHART_RANGE_S",
    "CHART_STEP_S",
    "QUERY_TIMEOUT_S",
    "Fetched",
    "PrometheusAPI",
    "RangeSeries",
    "SeriesCache",
    "latency_query",
    "quote_label_value",
    "rate_query",
]

CHART_RANGE_S = 3600
"""What a chart spans, seconds: the last hour (issue 13)."""
CHART_STEP_S = 60
"""Seconds between two points of a chart: 61 points an hour, a few pixels apart on the
smallest chart, and one Prometheus evaluation a minute of data."""
QUERY_TIMEOUT_S = 2.0
"""Longest one query may take, connect to last byte: a page waits for its charts at most
about this long (``PAGE_WAIT_S``), and a Prometheus that takes longer for 61 points of
one service is not answering."""
CACHE_TTL_S = 15.0
"""Seconds an answer (or a failure) is reused: the default scrape interval, so a newer
answer could hardly differ; a page refresh, every viewer and every live poll within it
share one query."""
MAX_CONCURRENT_QUERIES = 8
"""Queries in flight to Prometheus at once: a page of many services queries them side by
side, without opening hundreds of connections to Prometheus at once."""
MAX_ANSWER_BYTES = 1_048_576
"""Largest answer read: one series of 61 points is ~3 KiB; anything far larger is not
the answer to our query (a wrong URL), and is not held in memory."""
_STALE_DROP_S = 20 * CACHE_TTL_S  # an answer unused for this long (a deleted service) goes


@dataclass(frozen=True)
class RangeSeries:
    """One series over the chart's range: a value per step from ``start``, None where
    Prometheus has no sample (no traffic, a scrape missed) or the value is not a number
    (NaN: no request in the window; ±Inf: beyond the histogram's last bucket). Gaps stay
    gaps: nothing is interpolated or read as zero."""

    start: float  # Unix seconds of the first point
    step_s: float
    values: tuple[float | None, ...]

    @property
    def latest(self) -> float | None:
        """The value at the end of the range (now), None when that point is a gap."""
        return self.values[-1] if self.values else None

    @property
    def peak(self) -> float | None:
        found = [v for v in self.values if v is not None]
        return max(found) if found else None


@dataclass(frozen=True)
class Fetched:
    """What the cache holds for one query: its series, or why there is none."""

    series: RangeSeries | None
    error: str | None
    at: float  # monotonic seconds of the answer


def quote_label_value(value: str) -> str:
    """``value`` as a PromQL double-quoted string (Go's escapes: backslash, quote,
    newline), for a label matcher."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _service_matcher(service: str) -> str:
    if SERVICE_NAME.fullmatch(service) is None:  # the caller checked it; this is the border
        raise ValueError(f"not a service name: {service[:80]!r}")
    return f"service={quote_label_value(service)}"


def latency_query(service: str, *, window: str) -> str:
    """p95 of ``service``'s requests through the edges over ``window`` (seconds), from
    the edges' histogram: ServiceLatencyHigh's expression, for the whole service."""
    return (
        "histogram_quantile(0.95, sum by (le) (rate("
        f"orchestrify_http_request_duration_seconds_bucket{{{_service_matcher(service)}}}"
        f"[{window}])))"
    )


def rate_query(service: str, *, window: str) -> str:
    """Requests per second to ``service`` through the edges over ``window``:
    ServiceRequestRateHigh's left side, before its scaling by the request window."""
    return f"sum(rate(orchestrify_http_requests_total{{{_service_matcher(service)}}}[{window}]))"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PrometheusAPI:
    """Prometheus' query API at ``base_url`` (http(s)://HOST:PORT[/PREFIX]).
    ``transport`` replaces the network (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = QUERY_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._transport = transport
        self._tls: ssl.SSLContext | None = None

    def client(self) -> httpx.AsyncClient:
        """A client for one batch of queries (its connections are reused within it).
        The TLS context is made once: building one per client costs milliseconds of CPU
        on the event loop."""
        if self._tls is None:
            self._tls = ssl.create_default_context()  # the system's trust store
        return httpx.AsyncClient(
            verify=self._tls,
            transport=self._transport,
            timeout=self.timeout_s,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment between us and Prometheus
        )

    async def query_range(
        self, client: httpx.AsyncClient, query: str, *, start: float, end: float, step_s: float
    ) -> RangeSeries:
        """``query`` from ``start`` to ``end`` every ``step_s`` (Unix seconds): its one
        series, all gaps when it has none. ``MetricsUnavailable`` for anything else:
        refused, too slow (``timeout_s`` in all), an HTTP error, an error answer, an
        answer that is not a range query's."""
        params = {
            "query": query,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step_s:g}",
            "timeout": f"{self.timeout_s:g}s",  # Prometheus stops evaluating by then too
        }
        url = f"{self.base_url}/api/v1/query_range"
        try:
            async with asyncio.timeout(self.timeout_s):
                status, body = await self._get(client, url, params)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise MetricsUnavailable(
                f"Prometheus at {self.base_url} did not answer within {self.timeout_s:g} s",
                unreachable=True,
            ) from exc
        except httpx.TransportError as exc:
            raise MetricsUnavailable(
                f"Prometheus at {self.base_url} cannot be reached "
                f"({_short(str(exc)) or type(exc).__name__})",
                unreachable=True,
            ) from exc
        except httpx.HTTPError as exc:  # anything else httpx raises
            raise MetricsUnavailable(
                f"Prometheus at {self.base_url} could not be asked ({_short(str(exc))})"
            ) from exc
        return _parse(body, status, start=start, end=end, step_s=step_s)

    async def _get(
        self, client: httpx.AsyncClient, url: str, params: Mapping[str, str]
    ) -> tuple[int, bytes]:
        async with client.stream("GET", url, params=params) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise MetricsUnavailable(
                        f"Prometheus' answer is larger than {MAX_ANSWER_BYTES} bytes: "
                        "is the URL Prometheus'?"
                    )
            return response.status_code, bytes(body)


def _parse(body: bytes, status: int, *, start: float, end: float, step_s: float) -> RangeSeries:
    try:
        answer: Any = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        answer = None
    if not isinstance(answer, dict):
        raise MetricsUnavailable(
            f"Prometheus answered HTTP {status} with something that is not its JSON: "
            "is the URL Prometheus'?"
        )
    if status != 200 or answer.get("status") != "success":
        # Prometheus' errors: 400 (bad parameters), 422 (the expression failed), 503
        # (timed out or aborted), each with errorType and error.
        kind = answer.get("errorType")
        error = answer.get("error")
        said = f": {_short(f'{kind}: {error}')}" if isinstance(error, str) else ""
        raise MetricsUnavailable(f"Prometheus refused the query (HTTP {status}){said}")
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise MetricsUnavailable("Prometheus' answer is not a range query's (no matrix)")
    result = data.get("result")
    if not isinstance(result, list):
        raise MetricsUnavailable("Prometheus' answer has no result list")
    if len(result) > 1:  # every query here sums into one series
        raise MetricsUnavailable(f"Prometheus answered {len(result)} series, not one")
    count = round((end - start) / step_s) + 1
    values: list[float | None] = [None] * count
    if result:
        series = result[0]
        points = series.get("values") if isinstance(series, dict) else None
        if not isinstance(points, list):
            raise MetricsUnavailable("Prometheus' series has no values")
        for point in points:
            slot, value = _point(point, start=start, step_s=step_s)
            if 0 <= slot < count:
                values[slot] = value
    return RangeSeries(start=start, step_s=step_s, values=tuple(values))


def _point(point: object, *, start: float, step_s: float) -> tuple[int, float | None]:
    """A ``[time, "value"]`` pair as (its step from ``start``, its value or None)."""
    if (
        not isinstance(point, list)
        or len(point) != 2
        or not isinstance(point[0], int | float)
        or isinstance(point[0], bool)
        or not isinstance(point[1], str)
    ):
        raise MetricsUnavailable("Prometheus' series holds a point that is not [time, value]")
    try:
        value = float(point[1])  # Prometheus writes NaN, +Inf and -Inf as such
    except ValueError:
        raise MetricsUnavailable(
            f"Prometheus' series holds a value that is not a number: {point[1][:40]!r}"
        ) from None
    slot = round((float(point[0]) - start) / step_s)
    return slot, value if math.isfinite(value) else None


class SeriesCache:
    """Range series per query, each reused for ``ttl_s``, fetched at most once at a time
    (concurrent viewers wait for the same answer), at most ``max_concurrent`` queries in
    flight. After Prometheus could not be reached, the queries that follow within
    ``ttl_s`` fail at once with the same reason instead of each waiting its timeout.

    ``get`` never waits longer than it is told: what is not answered by then is answered
    later into the cache, for the next page or live poll."""

    def __init__(
        self,
        api: PrometheusAPI,
        *,
        ttl_s: float = CACHE_TTL_S,
        max_concurrent: int = MAX_CONCURRENT_QUERIES,
        range_s: float = CHART_RANGE_S,
        step_s: float = CHART_STEP_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = lambda: clock.utcnow().timestamp(),
    ) -> None:
        self.api = api
        self.ttl_s = ttl_s
        self.range_s = range_s
        self.step_s = step_s
        self._max_concurrent = max_concurrent
        self._monotonic = monotonic
        self._wall = wall
        self._entries: dict[str, Fetched] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs only
        self._down_until = -math.inf
        self._down_reason = ""
        self.queries_sent = 0  # to Prometheus, since start (tests, and a debugger's eye)

    def peek(self, query: str) -> Fetched | None:
        return self._entries.get(query)

    async def get(self, queries: Iterable[str], *, wait_s: float) -> dict[str, Fetched | None]:
        """The latest answer to each query: those older than ``ttl_s`` (or never asked)
        are asked again, and waited for up to ``wait_s`` seconds; an older answer is
        given meanwhile, None when there is none yet. ``wait_s=0`` never waits (the live
        polls): their stale charts are refreshed behind them."""
        wanted = list(dict.fromkeys(queries))
        now = self._monotonic()
        due = [
            q
            for q in wanted
            if q not in self._inflight
            and (q not in self._entries or now - self._entries[q].at >= self.ttl_s)
        ]
        if due:
            self._start(due)
        pending = [self._inflight[q] for q in wanted if q in self._inflight]
        if pending and wait_s > 0:
            await asyncio.wait(pending, timeout=wait_s)
        return {q: self._entries.get(q) for q in wanted}

    def _start(self, queries: list[str]) -> None:
        loop = asyncio.get_running_loop()
        batch = {query: loop.create_future() for query in queries}
        self._inflight.update(batch)
        task = loop.create_task(self._fetch_all(batch), name="prometheus-charts")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_all(self, batch: dict[str, asyncio.Future[None]]) -> None:
        """One batch: one client, at most ``max_concurrent`` of its queries at once."""
        end = self._wall()
        start = end - self.range_s
        limit = asyncio.Semaphore(self._max_concurrent)
        try:
            async with self.api.client() as client:

                async def one(query: str, done: asyncio.Future[None]) -> None:
                    async with limit:
                        try:
                            await self._fetch(client, query, start=start, end=end)
                        finally:
                            self._settle(query, done)

                await asyncio.gather(*(one(q, f) for q, f in batch.items()))
        finally:
            for query, done in batch.items():  # failed or cancelled: nobody waits on
                self._settle(query, done)
            self._drop_stale()

    async def _fetch(
        self, client: httpx.AsyncClient, query: str, *, start: float, end: float
    ) -> None:
        if self._monotonic() < self._down_until:
            self._store(query, None, self._down_reason)
            return
        self.queries_sent += 1
        try:
            series = await self.api.query_range(
                client, query, start=start, end=end, step_s=self.step_s
            )
        except MetricsUnavailable as exc:
            if exc.unreachable:
                self._down_until = self._monotonic() + self.ttl_s
                self._down_reason = str(exc)
            self._store(query, None, str(exc))
        except Exception as exc:  # a bug here must cost a chart, never the page
            log.exception("a query to Prometheus failed unexpectedly")
            self._store(query, None, f"Prometheus could not be asked ({type(exc).__name__})")
        else:
            self._store(query, series, None)

    def _store(self, query: str, series: RangeSeries | None, error: str | None) -> None:
        self._entries[query] = Fetched(series=series, error=error, at=self._monotonic())

    def _settle(self, query: str, done: asyncio.Future[None]) -> None:
        if self._inflight.get(query) is done:  # not a later batch's
            del self._inflight[query]
        if not done.done():
            done.set_result(None)

    def _drop_stale(self) -> None:
        cutoff = self._monotonic() - _STALE_DROP_S
        for query in [q for q, f in self._entries.items() if f.at < cutoff]:
            del self._entries[query]
