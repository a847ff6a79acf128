"""The status page's charts as SVG: points where the values put them, gaps kept, the
alert's line dashed, a text alternative, everything escaped; and a service's two charts
with their lines from its policy."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from orchestrify.controller.ui.charts import (
    LARGE,
    NO_ANSWER,
    NOT_YET,
    SMALL,
    ChartSize,
    latency_text,
    rate_line,
    rate_text,
    render_svg,
    service_charts,
)
from orchestrify.controller.ui.prometheus import Fetched, RangeSeries
from orchestrify.controller.ui.services import ServiceRow, service_row
from orchestrify.models import Service

SVG = "{http://www.w3.org/2000/svg}"
SIZE = ChartSize(100, 50, "chart-test")  # pad 3: x from 3 to 97, y from 47 (0) to 3 (top)


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def draw(values: tuple[float | None, ...], target: float, label: str = "a chart") -> ET.Element:
    series = RangeSeries(start=0, step_s=60, values=values)
    return parse(render_svg(series, target=target, size=SIZE, element_id="c1", label=label))


def points(path: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+) ([\d.]+)", path)]


def test_each_value_is_a_point_of_the_line_scaled_to_the_chart() -> None:
    # peak 1.0 and line 0.5: the top is 1.15, so 1.0 sits at 47 - 44 * 1/1.15
    svg = draw((0.0, 0.5, 1.0), target=0.5)
    (path,) = svg.findall(f"{SVG}path")
    assert path.get("class") == "chart-line" and path.get("fill") == "none"
    assert points(path.get("d", "")) == [(3.0, 47.0), (50.0, 27.9), (97.0, 8.7)]


def test_a_gap_stays_a_gap_and_a_lone_point_is_a_dot() -> None:
    svg = draw((0.2, 0.4, None, 0.3, None, None, 0.1, 0.2), target=1.0)
    paths = svg.findall(f"{SVG}path")
    dots = svg.findall(f"{SVG}circle")
    assert [len(points(p.get("d", ""))) for p in paths] == [2, 2]  # 0-1, then 6-7
    assert len(dots) == 1 and dots[0].get("class") == "chart-dot"
    x_of = [round(3 + 94 * i / 7, 1) for i in range(8)]
    assert float(dots[0].get("cx", "")) == x_of[3]
    assert [x for x, _ in points(paths[1].get("d", ""))] == [x_of[6], x_of[7]]


def test_no_data_at_all_draws_the_line_alone() -> None:
    svg = draw((None, None, None), target=0.1)
    assert svg.findall(f"{SVG}path") == [] and svg.findall(f"{SVG}circle") == []
    assert len(svg.findall(f"{SVG}line")) == 1


def test_the_target_is_a_dashed_line_across_at_its_height() -> None:
    svg = draw((0.1, 0.1), target=0.2)  # the line is the highest: top = 0.23
    (line,) = svg.findall(f"{SVG}line")
    assert line.get("class") == "chart-target"
    assert line.get("stroke-dasharray") == "5 3"
    assert (line.get("x1"), line.get("x2")) == ("3.0", "97.0")
    assert line.get("y1") == line.get("y2") == f"{47 - 44 / 1.15:.1f}"


def test_values_above_the_line_push_the_top_up_and_stay_inside() -> None:
    svg = draw((5.0, 0.1), target=0.1)
    ys = [y for _, y in points(svg.findall(f"{SVG}path")[0].get("d", ""))]
    assert all(3 <= y <= 47 for y in ys)
    (line,) = svg.findall(f"{SVG}line")
    assert float(line.get("y1", "")) > 45  # 0.1 of 5.75: near the bottom


def test_it_is_an_image_named_by_its_title_sized_and_classed_without_a_style() -> None:
    markup = str(
        render_svg(RangeSeries(0, 60, (1.0,)), target=2, size=LARGE, element_id="x-y", label="L")
    )
    svg = parse(markup)
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "x-y-title"
    title = svg.find(f"{SVG}title")
    assert title is not None and title.get("id") == "x-y-title" and title.text == "L"
    assert (svg.get("width"), svg.get("height"), svg.get("viewBox")) == (
        "560",
        "140",
        "0 0 560 140",
    )
    assert svg.get("class") == "chart chart-large"
    assert "style" not in markup and "<script" not in markup


def test_the_text_and_the_id_are_escaped() -> None:
    label = '</title><script>alert(1)</script> & "quoted"'
    markup = str(
        render_svg(
            RangeSeries(0, 60, (1.0, 2.0)), target=1, size=SMALL, element_id='a"b', label=label
        )
    )
    assert "<script>" not in markup
    svg = parse(markup)  # still well-formed
    assert svg.get("id") == 'a"b'
    title = svg.find(f"{SVG}title")
    assert title is not None and title.text == label


# --- words ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0975, "97.5 ms"), (0.13, "130 ms"), (0.0042, "4.2 ms"), (0.1, "100 ms"), (2.5, "2.5 s")],
)
def test_latency_in_words(seconds: float, text: str) -> None:
    assert latency_text(seconds) == text


@pytest.mark.parametrize(
    ("per_s", "text"), [(0.41666, "0.417/s"), (12.0, "12/s"), (0.0, "0/s"), (1500.4, "1500/s")]
)
def test_rate_in_words(per_s: float, text: str) -> None:
    assert rate_text(per_s) == text


# --- a service's charts ------------------------------------------------------------------------
def _row(healthy: int = 3) -> ServiceRow:
    now = datetime.now(UTC).isoformat()
    service = Service.model_validate(
        {
            "name": "web",
            "image": "demo:1",
            "replicas": 3,
            "policy": {
                "latency_target_ms": 100,
                "requests_per_replica": 20,
                "request_window_s": 120,
            },
            "created_at": now,
            "updated_at": now,
        }
    )
    return service_row(service, healthy)


def _fetched(*values: float | None) -> Fetched:
    return Fetched(series=RangeSeries(0, 60, values), error=None, at=0)


def test_the_rate_line_is_where_service_request_rate_high_fires() -> None:
    # rate x 120 s > 20 requests x 3 healthy replicas  <=>  rate > 0.5/s
    assert rate_line(_row(3)) == 0.5
    assert rate_line(_row(0)) == 0.0


def test_a_service_s_charts_say_now_the_peak_and_their_lines() -> None:
    charts = service_charts(
        _row(3),
        latency=_fetched(0.05, 0.13, 0.084),
        rate=_fetched(0.2, None, 0.25),
        size=SMALL,
    )
    lat, rate = charts.latency, charts.rate
    assert lat.now_text == "84 ms" and lat.target_text == "target 100 ms"
    assert lat.summary == "p95 latency, last hour: now 84 ms, max 130 ms; target 100 ms"
    assert rate.now_text == "0.25/s" and rate.target_text == "scale-out above 0.5/s"
    assert rate.summary == (
        "Request rate, last hour: now 0.25/s, max 0.25/s; scale-out above 0.5/s "
        "(20 requests per 120 s per healthy replica, 3 healthy)"
    )
    assert lat.svg is not None and rate.svg is not None
    assert lat.summary in parse(lat.svg).findtext(f"{SVG}title", "")
    assert parse(lat.svg).get("id") == "chart-web-latency-chart-small"
    assert lat.note is None


def test_a_gap_now_says_no_data() -> None:
    charts = service_charts(
        _row(), latency=_fetched(0.1, None), rate=_fetched(None, None), size=SMALL
    )
    assert charts.latency.now_text == "no data"
    assert charts.rate.summary.startswith("Request rate, last hour: no data;")


def test_no_answer_yet_or_a_failure_is_a_note_and_no_chart() -> None:
    failed = Fetched(series=None, error="Prometheus at http://p:9090 cannot be reached", at=0)
    charts = service_charts(_row(), latency=None, rate=failed, size=SMALL)
    assert charts.latency.svg is None and charts.latency.note == NOT_YET
    assert charts.rate.svg is None and charts.rate.note == NO_ANSWER
    assert charts.rate.detail == "Prometheus at http://p:9090 cannot be reached"
