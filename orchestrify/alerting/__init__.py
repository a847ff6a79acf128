"""Alerts in, decisions out: Alertmanager's payload, the alert -> action rules, and the
pure scaling policy. No I/O here; the controller stores and applies (controller.alerts).
"""

from orchestrify.alerting.payload import AlertBatch, AlertmanagerAlert, idempotency_key
from orchestrify.alerting.policy import (
    AlertFacts,
    Decision,
    Inputs,
    PolicyState,
    decide,
    decide_settle,
    episode_over,
)
from orchestrify.alerting.rules import Action, AlertRule, Matcher, RuleSet, parse_rules

__all__ = [
    "Action",
    "AlertBatch",
    "AlertFacts",
    "AlertRule",
    "AlertmanagerAlert",
    "Decision",
    "Inputs",
    "Matcher",
    "PolicyState",
    "RuleSet",
    "decide",
    "decide_settle",
    "episode_over",
    "idempotency_key",
    "parse_rules",
]
