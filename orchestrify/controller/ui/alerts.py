"""/ui/alerts: the alert episodes, firing and resolved, each with the decisions it led to.

An episode is one firing of one alert (Alertmanager's fingerprint and ``startsAt``), as the
controller stored it; every decision taken on it names it (``data.alert.instance``), so the
page puts them together: "this alert fired, and the controller scaled out (or refused,
and why)".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response

from orchestrify.controller.deps import ControllerState
from orchestrify.controller.ui.pages import (
    TEMPLATES,
    encode_versions,
    error_page,
    html_page,
    live_poll,
    to_login,
    ui_access,
)
from orchestrify.controller.ui.services import OUTCOME_TONES, time_text
from orchestrify.errors import StoreUnavailable
from orchestrify.models import SERVICE_NAME, Event
from orchestrify.store.alerts import AlertInstance, decisions_by_episode

__all__ = ["DECISIONS_READ", "EPISODES_SHOWN", "EpisodeRow", "episode_rows", "router"]

router = APIRouter(prefix="/ui")

EPISODES_SHOWN = 100  # firing episodes, and again resolved ones: the newest of each
DECISIONS_READ = 1000  # the last decisions matched to episodes; older ones are not shown
DECISIONS_PER_EPISODE = 10  # a long episode's re-evaluations: its newest decisions
# The page moves with every notice and decision: each writes an event.
LIVE_KINDS = ("events",)


@dataclass(frozen=True)
class DecisionRow:
    """One decision taken on an episode."""

    id: int
    time: str
    time_text: str
    action: str
    outcome: str
    tone: str
    reason: str | None
    message: str


@dataclass(frozen=True)
class EpisodeRow:
    """One alert episode, with its decisions newest first."""

    name: str
    status: str
    tone: str
    service: str | None  # a service the page can link to (a valid name), or None
    about: str  # what it is about, in words: "service web, replica r-1, node n1"
    severity: str | None
    summary: str | None
    started: str
    started_text: str
    resolved: str | None
    resolved_text: str | None
    last_seen_text: str
    decisions: tuple[DecisionRow, ...]
    more_decisions: int  # decisions of this episode not shown (beyond the newest ones)


def _decision_row(event: Event) -> DecisionRow:
    outcome = event.outcome or "info"
    return DecisionRow(
        id=event.id,
        time=event.time.isoformat(),
        time_text=time_text(event.time),
        action=event.action or "—",
        outcome=outcome,
        tone=OUTCOME_TONES.get(outcome, "info"),
        reason=event.reason,
        message=event.message,
    )


def episode_rows(
    episodes: Iterable[tuple[AlertInstance, str | None]], decisions: Iterable[Event]
) -> list[EpisodeRow]:
    """The rows of ``episodes`` (each with its summary), in the order given, each with
    the ``decisions`` that name it."""
    taken = decisions_by_episode(decisions)
    rows = []
    for episode, summary in episodes:
        labels = episode.labels
        about = ", ".join(f"{k} {labels[k]}" for k in ("service", "replica", "node") if k in labels)
        mine = taken.get(episode.id, [])
        service = episode.service
        rows.append(
            EpisodeRow(
                name=episode.alertname,
                status=episode.status,
                tone="bad" if episode.status == "firing" else "ok",
                service=service if service and SERVICE_NAME.fullmatch(service) else None,
                about=about or "the fleet",
                severity=labels.get("severity"),
                summary=summary,
                started=episode.starts_at.isoformat(),
                started_text=time_text(episode.starts_at),
                resolved=episode.resolved_at.isoformat() if episode.resolved_at else None,
                resolved_text=time_text(episode.resolved_at) if episode.resolved_at else None,
                last_seen_text=time_text(episode.last_seen_at),
                decisions=tuple(_decision_row(e) for e in mine[:DECISIONS_PER_EPISODE]),
                more_decisions=max(0, len(mine) - DECISIONS_PER_EPISODE),
            )
        )
    return rows


async def _parts(state: ControllerState) -> dict[str, Any]:
    found = await state.views.alert_episodes(limit=EPISODES_SHOWN, decisions=DECISIONS_READ)
    return {
        "firing": episode_rows(found.firing, found.decisions),
        "resolved": episode_rows(found.resolved, found.decisions),
        "shown": EPISODES_SHOWN,
    }


@router.get("/alerts")
async def alerts_page(request: Request) -> Response:
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(request.url.path)
    state = access.owner
    versions = state.feed.versions(LIVE_KINDS)  # before the read
    try:
        parts = await _parts(state)
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    return html_page(
        "alerts.html",
        page="alerts",
        csrf=access.signer.csrf(session),
        version=encode_versions(versions),
        **parts,
    )


@router.get("/live/alerts")
async def alerts_live(request: Request) -> Response:
    """The alerts page's lists, live (see ``pages.live_poll``)."""

    async def render(state: ControllerState, _versions: tuple[int, ...], _csrf: str) -> str:
        return TEMPLATES.get_template("alerts_body.html").render(**await _parts(state))

    return await live_poll(request, LIVE_KINDS, render)
