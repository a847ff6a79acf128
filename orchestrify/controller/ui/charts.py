"""The services pages' charts: each service's p95 latency and request rate over the last
hour, from Prometheus (``prometheus``), drawn on the server as small inline SVGs against
the line the alert fires at, with a text alternative and the latest value in words.

Only when the controller knows a Prometheus (``--prometheus-url``). The queries take
the windows of the alerting profile the rules were rendered with, so a chart crosses
its dashed line when the alert's expression does: the p95 against the service's
``latency_target_ms`` (ServiceLatencyHigh, which looks at each replica: the chart shows
the whole service), the request rate against requests_per_replica x healthy replicas /
request_window_s (ServiceRequestRateHigh).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request
from markupsafe import Markup, escape

from orchestrify.config_render import PROFILE_DEFAULTS
from orchestrify.controller.deps import ControllerState
from orchestrify.controller.ui.prometheus import (
    QUERY_TIMEOUT_S,
    Fetched,
    PrometheusAPI,
    RangeSeries,
    SeriesCache,
    latency_query,
    rate_query,
)
from orchestrify.controller.ui.services import ServiceRow
from orchestrify.models import SERVICE_NAME

__all__ = [
    "LARGE",
    "PAGE_WAIT_S",
    "SMALL",
    "Chart",
    "ChartSize",
    "ChartSource",
    "ServiceCharts",
    "chart_source",
    "latency_text",
    "rate_text",
    "render_svg",
    "service_charts",
]

PAGE_WAIT_S = QUERY_TIMEOUT_S + 0.5
"""Longest a page waits for its charts' queries; the live polls never wait (they show
what the cache has, and refresh it behind them)."""
NOT_YET = "Prometheus has not answered yet"
NO_ANSWER = "Prometheus did not answer"


@dataclass(frozen=True)
class ChartSize:
    width: int
    height: int
    css: str  # the class that sizes it on the page


SMALL = ChartSize(240, 60, "chart-small")  # a row of the services table
LARGE = ChartSize(560, 140, "chart-large")  # a service's page
_PAD = 3.0  # pixels between the frame and the highest or lowest point
_HEADROOM = 1.15  # the highest of the line and the data sits this far under the top


@dataclass(frozen=True)
class Chart:
    """One chart as a page shows it. ``svg`` is None when there is nothing to draw;
    ``note`` then says why (and ``detail`` what Prometheus said)."""

    title: str  # "p95 latency"
    svg: Markup | None
    now_text: str  # "84 ms", "no data"
    target_text: str  # what the dashed line is, with its value: "target 100 ms"
    why_text: str  # where the line's value comes from ("" when it is plain)
    summary: str  # the text alternative: now, highest and the line, over the last hour
    note: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ServiceCharts:
    latency: Chart
    rate: Chart


# --- numbers as words -------------------------------------------------------------------
def latency_text(seconds: float) -> str:
    """A latency in ms with three significant digits ("84.2 ms", "130 ms"), in s from 1 s."""
    ms = seconds * 1000
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    return f"{ms:.3g} ms"


def rate_text(per_s: float) -> str:
    """Requests per second with three significant digits ("0.417/s", "12/s", "1500/s")."""
    if per_s >= 1000:
        return f"{per_s:.0f}/s"
    return f"{per_s:.3g}/s"


# --- the drawing -------------------------------------------------------------------------
def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The series' unbroken stretches: a gap ends one."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                runs.append(current)
                current = []
        else:
            current.append((index, value))
    if current:
        runs.append(current)
    return runs


def render_svg(
    series: RangeSeries, *, target: float, size: ChartSize, element_id: str, label: str
) -> Markup:
    """``series`` as an inline SVG of ``size``: the data as a line (a gap stays a gap, a
    point alone is a dot), ``target`` as a dashed line across, and ``label`` as its
    ``<title>``, which names it for a screen reader (``aria-labelledby``). No style
    attribute (the page's CSP forbids them): classes for ui.css, and SVG's own
    geometry attributes. Everything it holds that is text is escaped."""
    width, height = size.width, size.height
    count = len(series.values)
    peak = series.peak or 0.0
    top = max(peak, target) * _HEADROOM
    if top <= 0:
        top = 1.0  # no data and a zero line: an empty chart with the line at the bottom

    def x(index: int) -> str:
        span = width - 2 * _PAD
        return f"{_PAD + (span * index / (count - 1) if count > 1 else span / 2):.1f}"

    def y(value: float) -> str:
        return f"{height - _PAD - (height - 2 * _PAD) * min(value, top) / top:.1f}"

    title_id = f"{element_id}-title"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {escape(size.css)}" '
        f'id="{escape(element_id)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="{escape(title_id)}">',
        f'<title id="{escape(title_id)}">{escape(label)}</title>',
        f'<rect class="chart-frame" x="0.5" y="0.5" width="{width - 1}" height="{height - 1}"/>',
        f'<line class="chart-target" x1="{_PAD:.1f}" y1="{y(target)}" x2="{width - _PAD:.1f}" '
        f'y2="{y(target)}" stroke-dasharray="5 3"/>',
    ]
    for run in _runs(series.values):
        if len(run) == 1:
            index, value = run[0]
            parts.append(f'<circle class="chart-dot" cx="{x(index)}" cy="{y(value)}" r="1.8"/>')
        else:
            path = " ".join(
                f"{'M' if n == 0 else 'L'}{x(index)} {y(value)}"
                for n, (index, value) in enumerate(run)
            )
            parts.append(f'<path class="chart-line" d="{path}" fill="none"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --- a service's two charts --------------------------------------------------------------
def rate_line(row: ServiceRow) -> float:
    """Requests per second at which ServiceRequestRateHigh fires for ``row`` now:
    rate x request_window_s > requests_per_replica x healthy replicas."""
    return row.requests_per_replica * row.healthy / row.request_window_s


def _chart(
    *,
    title: str,
    fetched: Fetched | None,
    target: float,
    target_text: str,
    why_text: str = "",
    size: ChartSize,
    element_id: str,
    say: Callable[[float], str],
) -> Chart:
    line = f"{target_text} ({why_text})" if why_text else target_text
    if fetched is None or fetched.series is None:
        note = NOT_YET if fetched is None else NO_ANSWER
        return Chart(
            title=title,
            svg=None,
            now_text="unknown",
            target_text=target_text,
            why_text=why_text,
            summary=f"{title}, last hour: {note}; {line}",
            note=note,
            detail=None if fetched is None else fetched.error,
        )
    series = fetched.series
    latest, peak = series.latest, series.peak
    now_text = say(latest) if latest is not None else "no data"
    if peak is None:
        summary = f"{title}, last hour: no data; {line}"
    else:
        summary = f"{title}, last hour: now {now_text}, max {say(peak)}; {line}"
    svg = render_svg(series, target=target, size=size, element_id=element_id, label=summary)
    return Chart(
        title=title,
        svg=svg,
        now_text=now_text,
        target_text=target_text,
        why_text=why_text,
        summary=summary,
    )


def service_charts(
    row: ServiceRow,
    *,
    latency: Fetched | None,
    rate: Fetched | None,
    size: ChartSize,
) -> ServiceCharts:
    """``row``'s two charts from what Prometheus answered (None: nothing yet)."""
    line = rate_line(row)
    return ServiceCharts(
        latency=_chart(
            title="p95 latency",
            fetched=latency,
            target=row.latency_target_s,
            target_text=f"target {latency_text(row.latency_target_s)}",
            size=size,
            element_id=f"chart-{row.name}-latency-{size.css}",
            say=latency_text,
        ),
        rate=_chart(
            title="Request rate",
            fetched=rate,
            target=line,
            target_text=f"scale-out above {rate_text(line)}",
            why_text=(
                f"{row.requests_per_replica} requests per {row.request_window_s} s "
                f"per healthy replica, {row.healthy} healthy"
            ),
            size=size,
            element_id=f"chart-{row.name}-rate-{size.css}",
            say=rate_text,
        ),
    )


# --- where the charts come from ----------------------------------------------------------
@dataclass
class ChartSource:
    """This app's Prometheus, its cache, and the alerting profile's windows."""

    owner: ControllerState
    cache: SeriesCache
    latency_window: str
    rate_window: str

    def queries(self, name: str) -> tuple[str, str]:
        return (
            latency_query(name, window=self.latency_window),
            rate_query(name, window=self.rate_window),
        )

    async def fetch(
        self, names: Iterable[str], *, wait_s: float
    ) -> dict[str, tuple[Fetched | None, Fetched | None]]:
        """Each service's (latency, rate) answers, waiting at most ``wait_s``."""
        names = list(names)
        # The store holds no other names; were one there, it is never queried, and its
        # row says so rather than failing the page.
        odd = [name for name in names if SERVICE_NAME.fullmatch(name) is None]
        pairs = {name: self.queries(name) for name in names if name not in odd}
        answers = await self.cache.get([q for pair in pairs.values() for q in pair], wait_s=wait_s)
        found: dict[str, tuple[Fetched | None, Fetched | None]] = {
            name: (answers[lat], answers[rate]) for name, (lat, rate) in pairs.items()
        }
        refused = Fetched(series=None, error="not a service name that can be queried", at=0)
        found.update((name, (refused, refused)) for name in odd)
        return found


def chart_source(request: Request) -> ChartSource | None:
    """This app's ``ChartSource``, made for its current run; None without a Prometheus."""
    state: ControllerState = request.app.state.controller
    url = state.settings.prometheus_url
    if url is None:
        return None
    found: ChartSource | None = getattr(request.app.state, "ui_charts", None)
    if found is None or found.owner is not state:
        profile = PROFILE_DEFAULTS[state.settings.alerting_profile]
        found = ChartSource(
            owner=state,
            cache=SeriesCache(PrometheusAPI(url)),
            latency_window=str(profile["latency_range"]),
            rate_window=str(profile["rate_range"]),
        )
        request.app.state.ui_charts = found
    return found


def build_charts(
    rows: Sequence[ServiceRow],
    answers: Mapping[str, tuple[Fetched | None, Fetched | None]],
    *,
    size: ChartSize,
) -> dict[str, ServiceCharts]:
    """Every row's charts (CPU only: run it in a worker thread with the page)."""
    return {
        row.name: service_charts(
            row, latency=answers[row.name][0], rate=answers[row.name][1], size=size
        )
        for row in rows
        if row.name in answers
    }
