"""Nginx log lines -> metrics: valid, multi-attempt and garbled lines."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from orchestrify.edge.telemetry import EdgeMetrics, parse_log_line
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


@pytest.mark.parametrize(
    "line",
    [
        "",
        "hello",
        "orchestrify-v1|web|10.0.0.1:1|200|200|0.1|GET",  # a field missing
        "orchestrify-v1|web|10.0.0.1:1|abc|200|0.1|0.1|GET",
        "orchestrify-v1|web|10.0.0.1:1|200|200|-1|0.1|GET",
        "orchestrify-v1|web|10.0.0.1:1, 10.0.0.2:1|200|200|0.1|0.1|GET",  # counts differ
        "orchestrify-v1|WEB|10.0.0.1:1|200|200|0.1|0.1|GET",
        "orchestrify-v1|web|10.0.0.1:1|999|200|0.1|0.1|GET",
        "orchestrify-v1|web|10.0.0.1:1|200|200|nan|0.1|GET",
        "orchestrify-v1|web|\x00\xff|200|200|0.1|0.1|GET|extra",
    ],
)
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
