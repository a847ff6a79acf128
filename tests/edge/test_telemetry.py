"""Nginx log lines -> metrics: valid, multi-attempt and garbled lines."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrify.edge.runner import TELEMETRY_NICE, Edge, EdgeSettings, _background_priority
from orchestrify.edge.telemetry import (
    LOG_FILE,
    MAX_LINE_BYTES,
    MAX_READ_BYTES,
    AccessLogReader,
    EdgeMetrics,
    parse_log_line,
)
from orchestrify.edge.view import AddressBook, build_view
from orchestrify.models import Upstreams

SYSLOG = "<190>Nov 21 22:30:00 orchestrify: "


def test_parses_a_syslog_datagram() -> None:
    rec = parse_log_line(SYSLOG + "orchestrify-v1|web|10.0.0.1:31000|200|200|0.052|0.053|GET")
    assert rec is not None
    assert (rec.service, rec.status, rec.method) == ("web", 200, "GET")
    assert [(a.address, a.status, a.seconds) for a in rec.attempts] == [
        ("10.0.0.1:31000", 200, 0.052)
    ]


def test_several_attempts_and_redirect_groups() -> None:
    rec = parse_log_line(
        "orchestrify-v1|web|10.0.0.1:1, 10.0.0.2:1 : 10.0.0.3:1|200|502, 200 : 200"
        "|-, 0.010 : 0.020|0.031|POST"
    )
    assert rec is not None
    assert [(a.address, a.status, a.seconds) for a in rec.attempts] == [
        ("10.0.0.1:1", 502, None),
        ("10.0.0.2:1", 200, 0.010),
        ("10.0.0.3:1", 200, 0.020),
    ]


def test_no_upstream_503() -> None:
    rec = parse_log_line("orchestrify-v1|idle|-|503|-|-|0.000|GET")
    assert rec is not None and rec.status == 503 and rec.attempts == ()


GARBLED = [
    "hello",
    "orchestrify-v1|web|10.0.0.1:1|200|200|0.1|GET",  # a field missing
    "orchestrify-v1|web|10.0.0.1:1|abc|200|0.1|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|200|200|-1|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1, 10.0.0.2:1|200|200|0.1|0.1|GET",  # counts differ
    "orchestrify-v1|WEB|10.0.0.1:1|200|200|0.1|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|999|200|0.1|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|200|200|nan|0.1|GET",
    "orchestrify-v1|web|\x00\xff|200|200|0.1|0.1|GET|extra",
]


@pytest.mark.parametrize("line", ["", *GARBLED])
def test_garbled_lines_are_none(line: str) -> None:
    assert parse_log_line(line) is None


def test_metrics_per_replica_and_dropped_lines() -> None:
    registry = CollectorRegistry()
    metrics = EdgeMetrics(registry)
    book = AddressBook()
    book.update(
        build_view(
            Upstreams.model_validate(
                {
                    "version": 1,
                    "services": [
                        {
                            "name": "web",
                            "port": 8000,
                            "drain_s": 5,
                            "replicas": [
                                {
                                    "id": "web-a",
                                    "address": "10.0.0.1:1",
                                    "node": "n1",
                                    "node_name": "w1",
                                },
                                {
                                    "id": "web-b",
                                    "address": "10.0.0.2:1",
                                    "node": "n2",
                                    "node_name": "w2",
                                },
                            ],
                        }
                    ],
                }
            )
        )
    )
    assert metrics.ingest("orchestrify-v1|web|10.0.0.1:1|200|200|0.150|0.151|GET", book)
    assert metrics.ingest(
        "orchestrify-v1|web|10.0.0.2:1, 10.0.0.1:1|200|502, 200|0.001, 0.040|0.05|PUT", book
    )
    assert not metrics.ingest("garbage", book)
    get = registry.get_sample_value
    a = {"service": "web", "replica": "web-a", "node": "w1"}
    b = {"service": "web", "replica": "web-b", "node": "w2"}
    assert get("orchestrify_http_request_duration_seconds_count", a) == 2
    assert get("orchestrify_http_request_duration_seconds_bucket", {**a, "le": "0.1"}) == 1
    assert get("orchestrify_http_request_duration_seconds_bucket", {**a, "le": "0.25"}) == 2
    assert get("orchestrify_http_request_duration_seconds_count", b) == 1
    assert get("orchestrify_http_requests_total", {"service": "web", "status": "200"}) == 2
    assert get("orchestrify_edge_log_lines_dropped_total") == 1


def _book() -> AddressBook:
    book = AddressBook()
    book.update(
        build_view(
            Upstreams.model_validate(
                {
                    "version": 1,
                    "services": [
                        {
                            "name": "web",
                            "port": 8000,
                            "drain_s": 5,
                            "replicas": [
                                {"id": "web-a", "address": "10.0.0.1:1", "node": "n1"},
                                {"id": "web-b", "address": "10.0.0.2:1", "node": "n2"},
                            ],
                        }
                    ],
                }
            )
        )
    )
    return book


VALID = "orchestrify-v1|web|10.0.0.1:1|200|200|0.150|0.151|GET"
TRICKY = [
    *GARBLED,
    VALID,
    "orchestrify-v1|web|-|503|-|-|0.000|GET",
    "orchestrify-v1|web|-|503|200|-|0.000|GET",  # no address: the rest is not looked at
    "orchestrify-v1|web||200|200|0.1|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|0200|200|0.1|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|200|-|-|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|200|2x0|0.1|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|200|200|0.1|x|GET",
    "orchestrify-v1|web|10.0.0.1:1|200|200|inf|0.1|GET",
    "orchestrify-v1|web|10.0.0.1:1|200|200|0.1|0.1|GET\r",
    "<190>Nov 21 22:30:00 orchestrify: " + VALID,
    "orchestrify-v1|web|10.0.0.2:1, 10.0.0.1:1|200|502, 200|0.001, 0.040|0.05|PUT",
]


@pytest.mark.parametrize("line", TRICKY)
def test_bulk_path_accepts_exactly_what_the_parser_accepts(line: str) -> None:
    metrics = EdgeMetrics(CollectorRegistry())
    book = _book()
    # A first valid line makes the service and method known: the fast path is taken.
    assert metrics.ingest_lines([VALID, "orchestrify-v1|web|-|503|-|-|0.0|PUT"], book) == 2
    assert metrics.ingest_lines([line], book) == (1 if parse_log_line(line) else 0)


def test_bulk_and_line_by_line_give_the_same_metrics() -> None:
    one, bulk = CollectorRegistry(), CollectorRegistry()
    by_line, by_batch = EdgeMetrics(one), EdgeMetrics(bulk)
    book = _book()
    lines = TRICKY * 3 + [VALID.replace("0.150", f"0.0{n % 10}") for n in range(50)]
    for line in lines:
        by_line.ingest(line, book)
    by_batch.ingest_lines(lines, book)

    def samples(
        registry: CollectorRegistry,
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in registry.collect()
            for s in fam.samples
            if not s.name.endswith("_created")
        }

    assert samples(bulk) == samples(one)
    assert samples(bulk)[("orchestrify_edge_log_lines_dropped_total", ())] > 0


def test_an_address_that_moves_to_another_replica_is_counted_under_the_new_one() -> None:
    metrics = EdgeMetrics(CollectorRegistry())
    book = _book()
    metrics.ingest_lines([VALID], book)
    book.update(
        build_view(
            Upstreams.model_validate(
                {
                    "version": 2,
                    "services": [
                        {
                            "name": "web",
                            "port": 8000,
                            "drain_s": 5,
                            "replicas": [{"id": "web-c", "address": "10.0.0.1:1", "node": "n3"}],
                        }
                    ],
                }
            )
        )
    )
    metrics.ingest_lines([VALID], book)
    get = metrics.registry.get_sample_value
    count = "orchestrify_http_request_duration_seconds_count"
    assert get(count, {"service": "web", "replica": "web-a", "node": "n1"}) == 1
    assert get(count, {"service": "web", "replica": "web-c", "node": "n3"}) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count(metrics: EdgeMetrics) -> float:
    return (
        metrics.registry.get_sample_value(
            "orchestrify_http_requests_total", {"service": "web", "status": "200"}
        )
        or 0.0
    )


def test_reader_skips_old_lines_waits_for_whole_lines_and_follows_a_rotation(
    tmp_path: Path,
) -> None:
    path = tmp_path / LOG_FILE
    path.write_text(VALID + "\n")  # written before this edge started: not counted
    clock = FakeClock()
    metrics = EdgeMetrics(CollectorRegistry())
    reader = AccessLogReader(path, metrics=metrics, book=_book(), rotate_bytes=200, clock=clock)
    try:
        assert reader.poll() == 0
        writer = path.open("a")  # Nginx's worker, holding its descriptor
        writer.write(VALID + "\n" + VALID[:20])
        writer.flush()
        assert reader.poll() == 1  # the cut line waits for its end
        writer.write(VALID[20:] + "\n")
        writer.flush()
        assert reader.poll() == 1
        writer.write(VALID + "\n")
        writer.flush()
        assert reader.rotation_due() is False  # not read yet
        reader.poll()
        assert reader.rotation_due()
        reader.rotate()
        assert not path.exists() and not reader.rotation_due()  # not twice in a row
        # Until the worker reopens, its lines still reach the unlinked file.
        writer.write(VALID + "\n")
        writer.flush()
        assert reader.poll() == 1
        new_writer = path.open("a")  # Nginx reopened: a new file
        new_writer.write(VALID + "\n")
        new_writer.flush()
        writer.write(VALID + "\n")  # a worker flushing its buffer on its way to reopen
        writer.flush()
        assert reader.poll() == 2  # both files, the new one from its start
        clock.now += 10
        writer.write(VALID + "\n")
        writer.flush()
        assert reader.poll() == 1  # read a last time, then let go
        writer.write(VALID + "\n")
        writer.flush()
        assert reader.poll() == 0
        writer.close()
        new_writer.close()
        assert _count(metrics) == 7
    finally:
        reader.close()


def test_reader_drops_an_endless_line_and_waits_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE
    metrics = EdgeMetrics(CollectorRegistry())
    reader = AccessLogReader(path, metrics=metrics, book=_book())
    try:
        assert reader.poll() == 0  # Nginx has not created it yet
        path.write_text("x" * (MAX_LINE_BYTES + 1))
        assert reader.poll() == 0  # first seen after the edge started: read from its start
        with path.open("a") as f:
            f.write("tail of the garbage\n" + VALID + "\n")
        assert reader.poll() == 1
        assert metrics.dropped._value.get() == 2  # the long line, then its tail
    finally:
        reader.close()


def test_a_burst_bigger_than_one_read_is_read_over_several_polls(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE
    metrics = EdgeMetrics(CollectorRegistry())
    reader = AccessLogReader(path, metrics=metrics, book=_book())
    try:
        reader.poll()  # no file yet: everything written from now on is new
        lines = MAX_READ_BYTES // len(VALID) + 100
        path.write_text((VALID + "\n") * lines)
        first = reader.poll()
        assert reader.behind and 0 < first < lines
        assert reader.poll() == lines - first
        assert not reader.behind
        assert _count(metrics) == lines
    finally:
        reader.close()


def test_a_file_emptied_in_place_is_read_again_from_its_start(tmp_path: Path) -> None:
    """The edge role's timer empties the file in place (truncate) when it grew past its
    bound: Nginx's workers keep appending to the same file, and the edge reads those new
    lines from the start instead of waiting past its old offset."""
    path = tmp_path / LOG_FILE
    metrics = EdgeMetrics(CollectorRegistry())
    reader = AccessLogReader(path, metrics=metrics, book=_book())
    try:
        reader.poll()
        writer = path.open("a")  # Nginx's worker (O_APPEND)
        writer.write((VALID + "\n") * 3)
        writer.flush()
        assert reader.poll() == 3
        os.truncate(path, 0)
        writer.write(VALID + "\n")  # appended at the new end: offset 0
        writer.flush()
        assert reader.poll() + reader.poll() == 1
        writer.close()
        assert _count(metrics) == 4
    finally:
        reader.close()


def test_the_telemetry_thread_yields_to_nginx_and_the_rest_of_the_edge_does_not() -> None:
    """The access log is read and counted in a thread of its own at a lower CPU
    priority (bench/edge_hop.py: it kept the edge's p99 closer to a plain proxy's); the
    priority is the thread's alone, so the edge's control work keeps its own."""
    me = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, me)
    seen: list[int] = []

    def telemetry_thread() -> None:
        _background_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=telemetry_thread)
    thread.start()
    thread.join()
    assert seen == [min(19, before + TELEMETRY_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, me) == before


def test_the_edge_reads_its_access_log_in_the_niced_thread_and_ends_it_before_closing(
    tmp_path: Path,
) -> None:
    """The edge's own telemetry task polls the reader in the ``edge-telemetry`` thread at
    the lower priority; when the task ends, that thread has finished its poll."""
    settings = EdgeSettings(
        controller_url="http://127.0.0.1:1",
        token="t",
        nginx_conf_dir=tmp_path / "nginx",
        metrics_port=0,
        name="edge-1",
    )
    edge = Edge(settings, client=None, registry=CollectorRegistry())  # type: ignore[arg-type]
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    polls: list[tuple[str, int]] = []
    finished = threading.Event()

    class SlowReader:
        behind = False

        def poll(self) -> int:
            polls.append(
                (
                    threading.current_thread().name,
                    os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
                )
            )
            finished.clear()
            threading.Event().wait(0.2)  # a long poll, under way when the task is cancelled
            finished.set()
            return 0

        def rotation_due(self) -> bool:
            return False

    edge.log_reader = SlowReader()  # type: ignore[assignment]

    async def scenario() -> None:
        task = asyncio.create_task(edge._read_access_log())
        while not polls:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()  # the poll under way ended before the task did

    asyncio.run(scenario())
    name, nice = polls[0]
    assert name.startswith("edge-telemetry")
    assert nice == min(19, base + TELEMETRY_NICE)


def test_duration_histogram_exposes_what_prometheus_clients_histogram_does() -> None:
    """Same samples (buckets, sum, count) as ``prometheus_client.Histogram`` for the same
    requests, counted one by one there and as repeated lines here: bounds included in
    their bucket, values past the last bound only in +Inf."""
    import random

    from prometheus_client import Histogram

    from orchestrify.edge.telemetry import DURATION_BUCKETS

    rng = random.Random(14)
    values = [*DURATION_BUCKETS, 0.0, 11.0, 99.5] + [
        rng.choice((0.003, 0.2, 0.31)) for _ in range(50)
    ]
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "orchestrify_http_request_duration_seconds",
        "x",
        ["service", "replica", "node"],
        buckets=DURATION_BUCKETS,
        registry=reference_registry,
    ).labels("web", "unknown", "unknown")
    for v in values:
        reference.observe(v)
    metrics = EdgeMetrics()
    lines = [f"orchestrify-v1|web|10.0.0.1:31000|200|200|{v:.3f}|{v:.3f}|GET" for v in values]
    assert metrics.ingest_lines(lines, AddressBook()) == len(values)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in registry.collect()
            for s in family.samples
            if family.name == "orchestrify_http_request_duration_seconds"
            and not s.name.endswith("_created")
        }

    expected, got = samples(reference_registry), samples(metrics.registry)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    requests = metrics.registry.get_sample_value(
        "orchestrify_http_requests_total", {"service": "web", "status": "200"}
    )
    assert requests == len(values)
