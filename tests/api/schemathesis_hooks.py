"""schemathesis hooks for the API contract test: the few rules of the API that no JSON
Schema can state, so that a *positive* (schema-valid) case also obeys them.

Each is a relation between values, or a property that needs code to decide; the schema's
descriptions say them in words and the API answers them with a 422 naming the field.
Without these hooks schemathesis would count such a 422 as "schema-valid request
rejected". Negative cases are never filtered, and no check is turned off.

- a service's counts: min_replicas <= replicas <= max_replicas (defaults 1, 1, 10);
- a rule set: rule names are unique, and a regex matcher (=~, !~) compiles;
- an alert's startsAt/endsAt: a date-time that still exists once converted to UTC
  (0001-01-01T00:00:00+01:00 is before the year 1 in UTC);
- a service's log options are ones its log driver takes (orchestrify/logdrivers.py;
  gelf needs gelf-address). A PATCH that changes either gives both (a PATCH of one
  alone is checked against the stored other, which a case cannot know).

One more, about a route rather than a rule: ``POST /v1/nodes/register`` with the
``node_id`` of a node the store does not know creates ``/v1/nodes/{node_id}`` under that
id (README "Orphans, adoption and versions": an agent keeps its id across a lost store
or a forced removal). schemathesis' use-after-free check counts only a POST to a prefix
of the deleted path as re-creating it, so a stateful chain "DELETE the node, register
its id again, GET it" reads as a deleted node still served. In the stateful phase only,
a registration therefore leaves its ``node_id`` out (a new node with a new id); the
other phases still register with ids.

Loaded with SCHEMATHESIS_HOOKS=tests.api.schemathesis_hooks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import schemathesis

from orchestrify.alerting.rules import Matcher
from orchestrify.logdrivers import DEFAULT_LOG_DRIVER, log_opts_problem
from orchestrify.models import FieldError, check_bounds

REPLICA_DEFAULTS = {"replicas": 1, "min_replicas": 1, "max_replicas": 10}


def counts_hold(body: dict[str, Any], *, defaults: dict[str, int] | None) -> bool:
    """Whether the body's replica counts are consistent. With ``defaults`` (a create) the
    missing ones take them; without (a patch) only the given ones are compared, as the
    store does (a clash with the stored counts is its own 409)."""
    given = {
        k: int(v)
        for k in REPLICA_DEFAULTS
        if isinstance(v := body.get(k), int | float) and not isinstance(v, bool)
    }
    if defaults is not None:
        counts = defaults | given
    else:
        lo, hi = given.get("min_replicas", 0), given.get("max_replicas", 10**9)
        counts = {"replicas": given.get("replicas", lo), "min_replicas": lo, "max_replicas": hi}
    try:
        check_bounds(counts["replicas"], counts["min_replicas"], counts["max_replicas"])
    except FieldError:
        return False
    return True


def rules_hold(body: dict[str, Any]) -> bool:
    rules = body.get("rules")
    if not isinstance(rules, list):
        return True
    names = [r.get("name") for r in rules if isinstance(r, dict)]
    if len(names) != len(set(map(str, names))):
        return False
    for rule in rules:
        for text in rule.get("matchers") or [] if isinstance(rule, dict) else []:
            try:
                Matcher.parse(text)
            except (ValueError, TypeError):
                return False
    return True


def _exists_in_utc(text: Any) -> bool:
    if not isinstance(text, str):
        return True
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return True


def log_opts_hold(body: dict[str, Any], *, create: bool) -> bool:
    driver, opts = body.get("log_driver"), body.get("log_opts")
    if not create and driver is None and opts is None:
        return True
    if not create and (driver is None or opts is None):
        return False
    driver = DEFAULT_LOG_DRIVER if driver is None else driver
    opts = {} if opts is None else opts
    if not isinstance(driver, str) or not isinstance(opts, dict):
        return True  # the schema's own business
    if not all(isinstance(v, str) for v in opts.values()):
        return True
    return log_opts_problem(driver, opts) is None


def alerts_hold(body: dict[str, Any]) -> bool:
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        return True
    return all(
        _exists_in_utc(alert.get(key))
        for alert in alerts
        if isinstance(alert, dict)
        for key in ("startsAt", "endsAt")
    )


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Stateful registrations create a new node (see the module docstring)."""
    meta = case.meta
    if (
        meta is not None
        and meta.phase.name == "stateful"
        and case.operation.path == "/v1/nodes/register"
        and isinstance(case.body, dict)
    ):
        case.body = {k: v for k, v in case.body.items() if k not in ("node_id", "node_token")}
    return case


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Keep every negative case; keep a positive one only when it obeys the rules above."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return True
    where = f"{case.operation.method.upper()} {case.operation.path}"
    if where == "POST /v1/services":
        return counts_hold(case.body, defaults=REPLICA_DEFAULTS) and log_opts_hold(
            case.body, create=True
        )
    if where == "PATCH /v1/services/{name}":
        return counts_hold(case.body, defaults=None) and log_opts_hold(case.body, create=False)
    if where == "PUT /v1/rules":
        return rules_hold(case.body)
    if where == "POST /v1/alerts":
        return alerts_hold(case.body)
    return True
