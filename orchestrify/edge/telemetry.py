"""Request telemetry: Nginx's access log, read in bulk, becomes Prometheus metrics.

Nginx logs one line per proxied request in the ``orchestrify-v1`` format of
``templates/nginx/nginx.conf.j2``: service, upstream address(es), status, upstream
status(es), upstream response time(s), request time, method. A request that tried
several replicas lists them all (``a:1, b:2``; `` : `` after an internal redirect);
each attempt's time is recorded against the replica that served it.

Off the hot path: each Nginx worker buffers its lines (``access_log ... buffer=64k
flush=1s``) and appends them to ``telemetry.log`` in the edge's Nginx temp dir in one
write per buffer; the edge reads what was appended every ``POLL_S`` and ingests it in
one batch (``AccessLogReader``). Per request that is a memory copy in Nginx and a few
microseconds of Python, where one syslog datagram per request cost a syscall in Nginx
and ~25 µs of Python in the edge's event loop, and was lost whenever the edge fell
behind (a full UDP buffer drops datagrams; the latency histograms then under-count).
The edge keeps the file small: past ``ROTATE_BYTES`` it unlinks it and has Nginx
reopen its logs, reading the old file to its end through the descriptor it holds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from orchestrify.edge.view import AddressBook

log = logging.getLogger(__name__)

__all__ = [
    "DURATION_BUCKETS",
    "LOG_FILE",
    "AccessLogReader",
    "Attempt",
    "EdgeMetrics",
    "RequestLog",
    "parse_log_line",
]

MARKER = "orchestrify-v1|"
# In the edge's prefix: Nginx appends the lines here, the edge reads them.
LOG_FILE = "telemetry.log"
# How often the edge reads what Nginx appended (Nginx itself writes each worker's lines
# at least every second, `flush=1s`): a line reaches /metrics within about 1.25 s.
POLL_S = 0.25
# Past this size the edge unlinks the file and has Nginx reopen it (a few minutes of
# logs at 10,000 requests/s; the old file is read to its end before it is let go).
ROTATE_BYTES = 64 * 1024 * 1024
# Most read from a file in one poll (~10,000 lines): bounds how long one poll holds the
# event loop (tens of ms); a reader left behind polls again at once (``behind``).
MAX_READ_BYTES = 1024 * 1024
# A line longer than this is garbage (Nginx's are ~100 bytes): dropped, never buffered.
MAX_LINE_BYTES = 64 * 1024
# Least time between two rotations (a reopen that failed is not retried in a tight loop).
ROTATE_EVERY_S = 10.0
# How long a replaced file is still read after the edge saw it replaced: Nginx's workers
# flush their buffers into it when they reopen (at most flush=1s later).
OLD_FILE_GRACE_S = 3.0
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


class DurationSeries:
    """One label set's histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last: past every bound
        self.total = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Count ``times`` requests that took ``seconds`` each."""
        # A value on a bound belongs to that bucket (``le``): the first bound >= it.
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += times
        self.total += seconds * times


class DurationHistogram(Collector):
    """``orchestrify_http_request_duration_seconds``, as prometheus_client's
    ``Histogram`` exposes it (buckets, sum, count), counted in plain lists.

    Why not ``Histogram``: its ``observe`` takes a lock per bucket counter, about 1 µs a
    request, a third of what the edge's Python spends on a log line, on the cores that
    Nginx serves from. Here one thread (the telemetry reader) counts, and ``collect``
    (the /metrics server's thread) copies each series' list, which the GIL makes whole;
    a scrape may see a request in ``_count`` a moment before ``_sum``, as with
    ``Histogram``'s separate counters."""

    NAME = "orchestrify_http_request_duration_seconds"
    HELP = "Upstream response time of each attempt, by service, replica and node."
    LABELS = ("service", "replica", "node")

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[tuple[str, str, str], DurationSeries] = {}
        registry.register(self)

    def labels(self, service: str, replica: str, node: str) -> DurationSeries:
        key = (service, replica, node)
        series = self._series.get(key)
        if series is None:
            series = self._series.setdefault(key, DurationSeries())
        return series

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.NAME, self.HELP, labels=self.LABELS)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.NAME, self.HELP, labels=self.LABELS)
        for key, series in list(self._series.items()):
            counts, total = list(series.counts), series.total
            running, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))
            family.add_metric(list(key), buckets, total)
        yield family


class EdgeMetrics:
    """The edge's metrics on its own registry (tests use a fresh one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.request_duration = DurationHistogram(self.registry)
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
        # Caches of the bulk path; bounded, because lines are input, not trusted.
        self._series: dict[tuple[str, str], DurationSeries] = {}  # (service, address) ->
        self._series_generation = -1
        self._services: set[str] = set()  # names and methods already validated
        self._methods: set[str] = set()

    def observe(self, record: RequestLog, book: AddressBook, times: int = 1) -> None:
        """Count ``times`` requests that ``record`` describes."""
        self.requests.labels(record.service, str(record.status)).inc(times)
        for attempt in record.attempts:
            if attempt.seconds is None:
                continue
            self._series_of(record.service, attempt.address, book).observe(attempt.seconds, times)

    def ingest(self, line: str, book: AddressBook) -> bool:
        """Parse and count one line; a garbled one is counted and dropped, never raised."""
        record = parse_log_line(line)
        if record is None:
            self.dropped.inc()
            return False
        self.observe(record, book)
        return True

    def ingest_lines(self, lines: Iterable[str], book: AddressBook) -> int:
        """Count a batch of log lines (empty ones skipped); returns how many were valid.

        Accepts exactly what ``parse_log_line`` accepts, but the common line (one
        attempt, a service and method seen before) is checked and counted without
        building records, and the request counters are bumped once per batch. Lines
        that are the same, byte for byte, are checked once and counted together: times
        are logged to the millisecond, so a batch holds few distinct lines per replica.
        """
        if self._series_generation != book.generation:
            self._series.clear()  # an address may now name another replica
            self._series_generation = book.generation
        statuses: dict[tuple[str, str], int] = {}
        valid = dropped = 0
        for line, times in Tally(lines).items():
            if not line:
                continue
            parts = line.split("|")
            fast = len(parts) == 8 and parts[0] == "orchestrify-v1"
            if fast:
                _, service, addrs, status, up_status, up_time, req_time, method = parts
                fast = "," not in addrs and " " not in addrs and self._known(service, method)
            if fast:
                try:
                    if len(status) != 3 or not 100 <= int(status) <= 599:
                        raise ValueError(status)
                    _number(req_time)
                    seconds = _number(up_time)
                    if addrs == "-":
                        if up_status != "-" or up_time != "-":
                            raise ValueError(addrs)
                    elif not addrs:
                        raise ValueError(addrs)
                    elif up_status != "-":
                        int(up_status)
                except ValueError:
                    fast = False
            if not fast:
                # Several attempts, a name not seen yet, anything unusual: the full
                # parser decides (so both paths accept exactly the same lines).
                record = parse_log_line(line)
                if record is None:
                    dropped += times
                    continue
                self._remember(record.service, record.method)
                self.observe(record, book, times)
                valid += times
                continue
            key = (service, status)
            statuses[key] = statuses.get(key, 0) + times
            if seconds is not None and addrs != "-":
                self._series_of(service, addrs, book).observe(seconds, times)
            valid += times
        for (service, status), n in statuses.items():
            self.requests.labels(service, status).inc(n)
        if dropped:
            self.dropped.inc(dropped)
        return valid

    def _known(self, service: str, method: str) -> bool:
        return service in self._services and method in self._methods

    def _remember(self, service: str, method: str) -> None:
        if len(self._services) < 10_000:
            self._services.add(service)
        if len(self._methods) < 100:
            self._methods.add(method)

    def _series_of(self, service: str, address: str, book: AddressBook) -> DurationSeries:
        child = self._series.get((service, address))
        if child is None:
            ref = book.lookup(service, address)
            replica, node = (ref.replica, ref.node) if ref else ("unknown", "unknown")
            child = self.request_duration.labels(service, replica, node)
            if len(self._series) < 10_000:
                self._series[(service, address)] = child
        return child


class AccessLogReader:
    """Reads the lines Nginx appended to ``path`` since the last poll, in bulk.

    Holds the file open and remembers its offset; a line cut by a write still under
    way waits for its end. When the file at ``path`` is replaced (the edge's own
    rotation, or logrotate), the old one is read for ``OLD_FILE_GRACE_S`` more (Nginx's
    workers flush into it as they reopen) and the new one from its start. At the very
    first open the lines already there are skipped: they predate this edge.
    """

    def __init__(
        self,
        path: Path,
        *,
        metrics: EdgeMetrics,
        book: AddressBook,
        rotate_bytes: int = ROTATE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.metrics = metrics
        self.book = book
        self.rotate_bytes = rotate_bytes
        self._clock = clock
        self._current: _OpenLog | None = None
        self._old: list[tuple[_OpenLog, float]] = []  # replaced files, read until then
        self._first_open = True
        self._rotated_at: float | None = None
        self.behind = False  # the last poll stopped at MAX_READ_BYTES: more is waiting

    def poll(self) -> int:
        """Ingest everything appended since the last poll; returns the valid lines."""
        self._follow()
        self.behind = False
        count = 0
        now = self._clock()
        for old, until in list(self._old):
            count += self._ingest(old)
            if now >= until:
                count += self._ingest(old)
                old.close()
                self._old.remove((old, until))
        if self._current is not None:
            count += self._ingest(self._current)
        return count

    def rotation_due(self) -> bool:
        if self._current is None or self._current.offset < self.rotate_bytes:
            return False
        return self._rotated_at is None or self._clock() - self._rotated_at >= ROTATE_EVERY_S

    def rotate(self) -> None:
        """Unlink the file (its lines are still read through the open descriptor); the
        caller then has Nginx reopen its logs, which creates a new one."""
        self._rotated_at = self._clock()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        for old, _ in self._old:
            old.close()
        self._old.clear()
        if self._current is not None:
            self._current.close()
            self._current = None

    def _follow(self) -> None:
        """Open the file at ``path``, or switch to it when it replaced the one held."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            log.warning("cannot stat the access log", extra={"error": str(exc)})
            return
        held = self._current
        if st is None:
            self._first_open = False  # Nginx creates it later: every line in it is new
            return
        if held is not None and held.inode == (st.st_dev, st.st_ino):
            return
        try:
            opened = _OpenLog.open(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("cannot open the access log", extra={"error": str(exc)})
            return
        if held is not None:
            self._old.append((held, self._clock() + OLD_FILE_GRACE_S))
        elif self._first_open:
            opened.skip_to_end()
        self._first_open = False
        self._current = opened

    def _ingest(self, opened: _OpenLog) -> int:
        lines, garbage = opened.read_lines()
        self.behind = self.behind or opened.full_read
        if garbage:
            self.metrics.dropped.inc(garbage)
        if not lines:
            return 0
        return self.metrics.ingest_lines(lines, self.book)


class _OpenLog:
    """One open access-log file: descriptor, offset and the unfinished last line."""

    def __init__(self, fd: int, inode: tuple[int, int]) -> None:
        self.fd = fd
        self.inode = inode
        self.offset = 0
        self._rest = b""
        self.full_read = False  # the last read filled MAX_READ_BYTES

    @classmethod
    def open(cls, path: Path) -> _OpenLog:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        return cls(fd, (st.st_dev, st.st_ino))

    def skip_to_end(self) -> None:
        self.offset = os.fstat(self.fd).st_size

    def _restart_if_emptied(self) -> None:
        """Read from the start again when the file was emptied in place (shorter than
        what was read of it: the edge role's timer bounds it while no edge reads it)."""
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_size < self.offset:
                log.warning("the access log was emptied in place; reading it from its start")
                self.offset, self._rest = 0, b""

    def read_lines(self) -> tuple[list[str], int]:
        """The whole lines appended since the last read, and how many over-long ones
        were thrown away."""
        try:
            data = os.pread(self.fd, MAX_READ_BYTES, self.offset)
        except OSError as exc:
            log.warning("cannot read the access log", extra={"error": str(exc)})
            return [], 0
        self.full_read = len(data) == MAX_READ_BYTES
        if not data:
            self._restart_if_emptied()
            return [], 0
        self.offset += len(data)
        data = self._rest + data
        end = data.rfind(b"\n")
        garbage = 0
        if end < 0:
            self._rest = data
            if len(self._rest) > MAX_LINE_BYTES:
                self._rest, garbage = b"", 1
            return [], garbage
        self._rest = data[end + 1 :]
        if len(self._rest) > MAX_LINE_BYTES:
            self._rest, garbage = b"", 1
        return data[:end].decode("utf-8", errors="replace").split("\n"), garbage

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
