"""Webhook payloads shaped exactly as Alertmanager 0.25 sends them (field for field,
including the zero ``endsAt`` of firing alerts and the ``groupKey`` format)."""

from __future__ import annotations

import json
from typing import Any

GENERATOR = "http://prometheus:9090/graph?g0.expr=histogram_quantile%280.95%2C+...%29&g0.tab=1"


def am_alert(
    alertname: str,
    *,
    status: str = "firing",
    starts_at: str = "2026-11-21T21:59:30.123456789Z",
    ends_at: str | None = None,
    fingerprint: str = "5bdc4b0ea7e3fa57",
    **labels: str,
) -> dict[str, Any]:
    severity = {"ServiceRequestRateLow": "info", "NodeDown": "critical"}.get(alertname, "warning")
    return {
        "status": status,
        "labels": {"alertname": alertname, "severity": severity, **labels},
        "annotations": {"summary": f"{alertname} on {labels.get('service', '?')}"},
        "startsAt": starts_at,
        "endsAt": ends_at
        or ("0001-01-01T00:00:00Z" if status == "firing" else "2026-11-21T22:04:30.5Z"),
        "generatorURL": GENERATOR,
        "fingerprint": fingerprint,
    }


def am_payload(*alerts: dict[str, Any], receiver: str = "orchestrify") -> dict[str, Any]:
    first = alerts[0]["labels"]
    group = {k: first[k] for k in ("alertname", "service") if k in first}
    common = {k: v for k, v in first.items() if all(a["labels"].get(k) == v for a in alerts)}
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    group_key = "{}:{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in group.items()) + "}"
    return {
        "receiver": receiver,
        "status": status,
        "alerts": list(alerts),
        "groupLabels": group,
        "commonLabels": common,
        "commonAnnotations": alerts[0]["annotations"] if len(alerts) == 1 else {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
    }
