"""bench/fleet.py: its arithmetic, and a real run on 5 agents without pytest or tests."""

from __future__ import annotations

import math

from bench.fleet import (
    Change,
    heartbeat_buckets,
    histogram_quantile,
    lag_buckets,
    match_notifications,
)
from bench.fleet_agents import Observation
from tests.bench.runner import run_without_test_extras


def test_quantile_interpolates_within_the_bucket_of_the_rank() -> None:
    before = {0.01: 10.0, 0.02: 10.0, 0.05: 10.0, math.inf: 10.0}
    # 100 new samples: 90 below 10 ms, 10 between 20 and 50 ms.
    after = {0.01: 100.0, 0.02: 100.0, 0.05: 110.0, math.inf: 110.0}
    assert histogram_quantile(0.5, before, after) < 0.01
    p99 = histogram_quantile(0.99, before, after)
    assert 0.02 < p99 <= 0.05
    assert math.isnan(histogram_quantile(0.99, after, after))  # nothing observed between


def test_quantile_beyond_the_last_bucket_is_its_bound() -> None:
    assert histogram_quantile(0.99, {}, {0.5: 0.0, math.inf: 3.0}) == 0.5


def test_lag_buckets_read_from_metrics_text() -> None:
    text = (
        "# HELP orchestrify_event_loop_lag_seconds lag\n"
        "# TYPE orchestrify_event_loop_lag_seconds histogram\n"
        'orchestrify_event_loop_lag_seconds_bucket{le="0.001"} 3.0\n'
        'orchestrify_event_loop_lag_seconds_bucket{le="+Inf"} 4.0\n'
        "orchestrify_event_loop_lag_seconds_count 4.0\n"
        "orchestrify_event_loop_lag_seconds_sum 0.01\n"
    )
    assert lag_buckets(text) == {0.001: 3.0, math.inf: 4.0}


def test_heartbeat_buckets_sum_the_route_over_statuses() -> None:
    route = 'method="POST",route="/v1/nodes/{node_id}/heartbeat"'
    text = "\n".join(
        [
            "# TYPE orchestrify_api_request_duration_seconds histogram",
            f'orchestrify_api_request_duration_seconds_bucket{{{route},status="200",le="0.01"}} 5',
            f'orchestrify_api_request_duration_seconds_bucket{{{route},status="200",le="+Inf"}} 6',
            f'orchestrify_api_request_duration_seconds_bucket{{{route},status="404",le="0.01"}} 1',
            f'orchestrify_api_request_duration_seconds_bucket{{{route},status="404",le="+Inf"}} 1',
            'orchestrify_api_request_duration_seconds_bucket{method="GET",'
            'route="/v1/nodes",status="200",le="0.01"} 9',
            'orchestrify_api_request_duration_seconds_bucket{method="GET",'
            'route="/v1/nodes",status="200",le="+Inf"} 9',
        ]
    )
    assert heartbeat_buckets(text) == {0.01: 6.0, math.inf: 7.0}


def test_notifications_match_the_oldest_waiting_change_of_their_service() -> None:
    scale_out = Change("web", "scale", runs=2, stops=0, requested=10.0, answered=10.1, ok=True)
    scale_in = Change("web", "scale", runs=0, stops=1, requested=11.0, answered=11.2, ok=True)
    other = Change("api", "create", runs=1, stops=0, requested=10.0, answered=10.05, ok=True)
    observations = [
        Observation(10.09, "web", "r1", "run"),  # before the answer arrived: 0
        Observation(10.3, "web", "r2", "run"),
        Observation(10.5, "web", "r9", "stop"),  # before the scale-in: nobody's
        Observation(11.5, "web", "r1", "stop"),
        Observation(12.0, "web", "r3", "run"),  # the reconciler's own: nobody's
    ]
    latencies, missed = match_notifications([scale_out, scale_in, other], observations)
    assert sorted(round(x, 3) for x in latencies) == [0.0, 0.2, 0.3]
    assert missed == 1  # api's replica never showed up


def test_quick_run_prints_its_table_without_pytest_or_tests() -> None:
    """A real controller process and 5 simulated agents (no Docker): a fast test, about
    10 s on a quiet machine, mostly starting the controller and the agents' process."""
    done = run_without_test_extras("bench/fleet.py", "--quick", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bench/fleet.py:")
    assert lines[1].split() == ["scenario", "figure", "measured", "goal", "met"]
    rows = [line for line in lines[3:] if line.startswith("5 agents")]
    figures = " | ".join(rows)
    for figure in (
        "agents registered",
        "heartbeat p99",
        "assignment notification p99",
        "API read p99",
        "event-loop lag p99",
        "controller CPU",
        "controller peak RSS",
        "nodes wrongly not ready",
    ):
        assert figure in figures, figure
    registered = next(r for r in rows if "agents registered" in r).split()
    assert registered[7] == "5"  # every simulated agent got in
    lag = next(r for r in rows if "event-loop lag p99" in r)
    assert "n/a" not in lag  # the controller exports the lag histogram
    # Where a heartbeat's time went: inside the controller (its own histogram of the
    # route) and the clients' own lateness, both measured, not n/a.
    for figure in ("heartbeat p99 inside the controller", "bench clients' own loop lag p99"):
        row = next(r for r in rows if figure in r)
        assert "n/a" not in row, row
