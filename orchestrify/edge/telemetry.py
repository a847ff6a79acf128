"""Request telemetry: Nginx's access-log lines over syslog (UDP) become Prometheus metrics.

Nginx logs one line per proxied request in the ``orchestrify-v1`` format of
``templates/nginx/nginx.conf.j2``: service, upstream address(es), status, upstream
status(es), upstream response time(s), request time, method. A request that tried
several replicas lists them all (``a:1, b:2``; `` : `` after an internal redirect);
each attempt's time is recorded against the replica that served it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from orchestrify.edge.view import AddressBook

log = logging.getLogger(__name__)

__all__ = [
    "DURATION_BUCKETS",
    "Attempt",
    "EdgeMetrics",
    "LogReceiver",
    "RequestLog",
    "parse_log_line",
]

MARKER = "orchestrify-v1|"
# Seconds; includes the 0.05/0.1/0.25/0.5/1 the latency rules and dashboards use.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SERVICE = re.compile(r"^[a-z0-9-]{1,63}$")
_METHOD = re.compile(r"^[A-Z]{1,20}$")


@dataclass(frozen=True)
class Attempt:
    address: str
    status: int | None  # None when no answer came (refused, timed out)
    seconds: float | None


@dataclass(frozen=True)
class RequestLog:
    service: str
    status: int
    attempts: tuple[Attempt, ...]
    request_seconds: float
    method: str


def _split(field: str) -> list[str]:
    # ", " separates attempts in one upstream group, " : " separates groups.
    return [p.strip() for p in field.replace(" : ", ", ").split(",")]


def _number(text: str) -> float | None:
    if text == "-":
        return None
    value = float(text)
    if value < 0 or value != value:  # negative or NaN
        raise ValueError(text)
    return value


def parse_log_line(line: str) -> RequestLog | None:
    """Parse one syslog datagram or log line; ``None`` when it is not a valid record."""
    start = line.find(MARKER)
    if start < 0:
        return None
    parts = line[start + len(MARKER) :].rstrip("\r\n").split("|")
    if len(parts) != 7:
        return None
    service, addrs, status, up_status, up_times, req_time, method = parts
    try:
        if not _SERVICE.match(service) or not _METHOD.match(method):
            return None
        final = int(status)
        if not 100 <= final <= 599:
            return None
        request_seconds = _number(req_time) or 0.0
        attempts: list[Attempt] = []
        if addrs != "-":
            a, s, t = _split(addrs), _split(up_status), _split(up_times)
            if not len(a) == len(s) == len(t):
                return None
            for address, st, secs in zip(a, s, t, strict=True):
                if not address or " " in address:
                    return None
                attempts.append(
                    Attempt(
                        address=address,
                        status=None if st == "-" else int(st),
                        seconds=_number(secs),
                    )
                )
    except ValueError:
        return None
    return RequestLog(
        service=service,
        status=final,
        attempts=tuple(attempts),
        request_seconds=request_seconds,
        method=method,
    )


class EdgeMetrics:
    """The edge's metrics on its own registry (tests use a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.request_duration = Histogram(
            "orchestrify_http_request_duration_seconds",
            "Upstream response time of each attempt, by service, replica and node.",
            ["service", "replica", "node"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "orchestrify_http_requests",
            "Requests through Nginx by service and final status.",
            ["service", "status"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "orchestrify_edge_log_lines_dropped",
            "Log lines from Nginx that could not be parsed (dropped).",
            registry=self.registry,
        )
        self.reloads = Counter(
            "orchestrify_edge_reloads",
            "Config applies that changed Nginx, by outcome (ok, refused, rolled_back).",
            ["outcome"],
            registry=self.registry,
        )

    def observe(self, record: RequestLog, book: AddressBook) -> None:
        self.requests.labels(record.service, str(record.status)).inc()
        for attempt in record.attempts:
            if attempt.seconds is None:
                continue
            ref = book.lookup(record.service, attempt.address)
            replica, node = (ref.replica, ref.node) if ref else ("unknown", "unknown")
            self.request_duration.labels(record.service, replica, node).observe(attempt.seconds)

    def ingest(self, line: str, book: AddressBook) -> bool:
        """Parse and count one line; a garbled one is counted and dropped, never raised."""
        record = parse_log_line(line)
        if record is None:
            self.dropped.inc()
            return False
        self.observe(record, book)
        return True


class LogReceiver(asyncio.DatagramProtocol):
    """UDP syslog endpoint Nginx's ``access_log syslog:server=...`` sends to."""

    def __init__(self, metrics: EdgeMetrics, book: AddressBook) -> None:
        self.metrics = metrics
        self.book = book

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            line = data.decode("utf-8", errors="replace")
            self.metrics.ingest(line, self.book)
        except Exception:  # one bad datagram must never stop the receiver
            log.exception("log line failed")
            self.metrics.dropped.inc()

    def error_received(self, exc: Exception) -> None:
        log.warning("syslog socket error", extra={"error": str(exc)})
