"""The bench table: goals are checked, a missing figure is never "met"."""

import math

from bench.report import Report, at_least, at_most, percentile


def test_percentile_is_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert math.isnan(percentile([], 99))


def test_the_table_marks_each_goal_met_or_not() -> None:
    report = Report("fleet")
    report.add("1,000 agents", "API read p99", 42.0, "ms", at_most(100, "ms"))
    report.add("1,000 agents", "heartbeat p99", 180.0, "ms", at_most(100, "ms"))
    report.add("edge", "requests", 12_650, "/s", at_least(20_000, "/s"))
    report.add("edge", "plain nginx", 21_000, "/s")
    text = report.table()
    lines = text.splitlines()
    assert lines[0] == "fleet"
    assert lines[1].split() == ["scenario", "figure", "measured", "goal", "met"]
    assert lines[3].endswith("yes") and "42 ms" in lines[3]
    assert lines[4].endswith("NO") and "≤ 100 ms" in lines[4]
    assert "12,650/s" in lines[5] and lines[5].endswith("NO")
    assert lines[6].endswith("-")
    assert not report.all_met


def test_a_figure_that_could_not_be_measured_fails_its_goal() -> None:
    report = Report("r")
    row = report.add("s", "median", math.nan, "s", at_most(10, "s"))
    assert row.met is False and row.measured == "n/a"


def test_a_count_of_zero_prints_as_a_count() -> None:
    report = Report("r")
    report.add("s", "failed", 0, "", at_most(0))
    assert report.table().splitlines()[-1].split() == ["s", "failed", "0", "≤", "0", "yes"]
