"""/v1/alerts (Alertmanager's webhook) and /v1/rules (the alert -> action mapping)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from orchestrify.alerting.payload import AlertBatch
from orchestrify.alerting.rules import RuleSet
from orchestrify.controller.deps import Admin, State

router = APIRouter(tags=["alerts"], dependencies=[Admin])


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
    """Alertmanager's webhook (payload version 4). 200 once every alert is stored;
    each alert (fingerprint + startsAt + status) acts at most once."""
    intake = state.alerts.receive(batch)
    return IntakeAnswer(received=intake.received, new=intake.new, duplicates=intake.duplicates)


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
