"""/v1/alerts (Alertmanager's webhook) and /v1/rules (the alert -> action mapping)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Query
from pydantic import BaseModel

from orchestrify.alerting.payload import AlertBatch
from orchestrify.alerting.rules import RuleSet
from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State
from orchestrify.errors import TooLarge
from orchestrify.models import AlertEpisode
from orchestrify.store.alerts import AlertStore, decisions_by_episode

DECISIONS_MATCHED = 1000  # the last decisions matched to episodes (as the status page)

router = api_router(tags=["alerts"], dependencies=[Admin])


class IntakeAnswer(BaseModel):
    status: str = "stored"
    received: int
    new: int
    duplicates: int


class RulesView(BaseModel):
    source: str
    rules: list[dict[str, Any]]


@router.post("/v1/alerts", response_model=IntakeAnswer)
def receive_alerts(batch: AlertBatch, state: State) -> IntakeAnswer:
    """Alertmanager's webhook (payload version 4). 200 once every alert is stored, and
    on the leading controller once its new alerts are decided too (a follower leaves
    them to the leader's loop); each alert (fingerprint + startsAt + status) acts at most
    once, whichever controllers it reaches and however often. A batch of more than
    ``max_alerts_per_batch`` alerts is a 413 (set Alertmanager's ``max_alerts``)."""
    cap = state.settings.max_alerts_per_batch
    if len(batch.alerts) > cap:
        raise TooLarge(
            f"{len(batch.alerts)} alerts in one notification; this controller takes at most "
            f"{cap} (max_alerts_per_batch): set max_alerts: {cap} in the Alertmanager "
            "receiver's webhook_configs"
        )
    intake = state.alerts.receive(batch)
    return IntakeAnswer(received=intake.received, new=intake.new, duplicates=intake.duplicates)


@router.get("/v1/alerts", response_model=list[AlertEpisode])
def list_alerts(
    state: State,
    status: Literal["firing", "resolved"] | None = Query(
        None, description="Only episodes in this status (default: both, firing first)."
    ),
    limit: int = Query(
        100, ge=1, le=1000, description="At most this many of each status, newest first."
    ),
) -> list[AlertEpisode]:
    """Alert episodes as the controller stored them (one per firing of one alert), the
    firing ones (newest start first) then the resolved ones (latest resolution first),
    each with the decisions it led to, newest first: what the status page's alerts page
    shows."""
    alerts = AlertStore(state.store)
    wanted = [status] if status is not None else ["firing", "resolved"]
    episodes = [found for kind in wanted for found in alerts.episodes(status=kind, limit=limit)]
    taken = decisions_by_episode(state.store.list_events(kind="decision", limit=DECISIONS_MATCHED))
    return [
        AlertEpisode(
            id=episode.id,
            alertname=episode.alertname,
            status=episode.status,
            labels=episode.labels,
            summary=summary,
            starts_at=episode.starts_at,
            last_seen_at=episode.last_seen_at,
            resolved_at=episode.resolved_at,
            decisions=taken.get(episode.id, []),
        )
        for episode, summary in episodes
    ]


def _view(state: State) -> RulesView:
    rules = state.alerts.rules.model_dump(mode="json")["rules"]
    return RulesView(source=state.alerts.rules_source, rules=rules)


@router.get("/v1/rules", response_model=RulesView)
def get_rules(state: State) -> RulesView:
    return _view(state)


@router.put("/v1/rules", response_model=RulesView)
def put_rules(rules: RuleSet, state: State) -> RulesView:
    """Replace every rule (validated as a whole; 422 names the field)."""
    state.alerts.set_rules(rules, source="api")
    return _view(state)
