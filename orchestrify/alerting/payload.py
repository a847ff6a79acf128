"""Alertmanager's webhook payload (version "4"), as a real Alertmanager sends it.

The models accept unknown fields: a newer Alertmanager may add some, and refusing them
would make Alertmanager retry a notification forever. What we rely on is required.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrify.models import JSON_INT_MAX, JsonInt, JsonTime

AlertStatus = Literal["firing", "resolved"]


class AlertmanagerAlert(BaseModel):
    """One alert of a notification."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    status: AlertStatus
    labels: dict[str, str] = Field(
        min_length=1,
        description="Must hold at least alertname.",
        # stated in the schema too (what _alertname checks)
        json_schema_extra={
            "required": ["alertname"],
            "properties": {"alertname": {"type": "string", "minLength": 1}},
        },
    )
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: JsonTime = Field(alias="startsAt")
    ends_at: JsonTime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = Field(
        "", description="Alertmanager's hash of the labels; derived from them when absent."
    )

    @field_validator("labels")
    @classmethod
    def _alertname(cls, v: dict[str, str]) -> dict[str, str]:
        if not v.get("alertname"):
            raise ValueError("must contain a non-empty 'alertname'")
        return v

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        if v is None:
            return None
        try:
            return v.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before the year 1 in UTC
            raise ValueError(f"{v.isoformat()} is out of range once converted to UTC") from exc

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]

    @property
    def identity(self) -> str:
        """Alertmanager's fingerprint, or a stable hash of the labels when it sent none."""
        if self.fingerprint:
            return self.fingerprint
        canonical = json.dumps(self.labels, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def instance(self) -> str:
        """One firing episode of one alert: its identity and when it started."""
        return f"{self.identity}@{self.starts_at.isoformat()}"

    @property
    def receipt_key(self) -> str:
        """The idempotency key: fingerprint + startsAt + status.

        A retry, a repeat notification (same startsAt while still firing) and the same
        notification from a second Alertmanager of a cluster all share it.
        """
        return idempotency_key(self.identity, self.starts_at, self.status)


def idempotency_key(fingerprint: str, starts_at: datetime, status: str) -> str:
    raw = f"{fingerprint}|{starts_at.astimezone(UTC).isoformat()}|{status}"
    return hashlib.sha256(raw.encode()).hexdigest()


class AlertBatch(BaseModel):
    """One webhook notification: a group of alerts sharing ``groupLabels``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    version: str = Field(
        description='Webhook payload version; "4" since Alertmanager 0.7.',
        json_schema_extra={"const": "4"},  # what _version checks, stated in the schema
    )
    receiver: str = ""
    status: AlertStatus
    group_key: str = Field("", alias="groupKey")
    truncated_alerts: JsonInt = Field(0, ge=0, le=JSON_INT_MAX, alias="truncatedAlerts")
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[AlertmanagerAlert]

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v != "4":
            raise ValueError(f"unsupported webhook payload version {v!r}; expected '4'")
        return v
