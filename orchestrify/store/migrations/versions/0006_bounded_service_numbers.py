"""Services' numbers within the bounds the API now enforces.

Earlier builds took any non-negative number for a service's CPU limit and scaling
policy, and a JSON number too large for a float (``1e400``) as infinity. One such service
made every listing of the services fail (no JSON answer can carry infinity), and a huge
one overflowed the controller's time arithmetic and the agents' Docker limits. This
revision brings each stored value within its bound: a value above it (infinity
included) becomes the bound, a value that is not a number at all (NaN) the field's
default. Every service is kept, with every other field as it was; the current spec and
the one a rollback returns to alike.

The bounds are written here as they were when this revision was made (a revision never
changes with the code after it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# field: (bound, default)
_SPEC = {"cpus": (1024.0, None), "drain_s": (3600.0, 10.0), "stop_grace_s": (3600.0, 10.0)}
_POLICY = {
    "scale_up_stabilization_s": (3600.0, 0.0),
    "scale_down_stabilization_s": (3600.0, 300.0),
    "cooldown_s": (86400.0, 30.0),
    "latency_target_ms": (3_600_000.0, 100.0),
}


def _bounded(values: dict[str, Any], bounds: Mapping[str, tuple[float, float | None]]) -> bool:
    """Bring ``values``' numbers within ``bounds`` in place; whether any changed."""
    changed = False
    for key, (bound, default) in bounds.items():
        value = values.get(key)
        if not isinstance(value, float | int) or isinstance(value, bool):
            continue
        if math.isnan(value):
            values[key] = default
        elif value > bound:
            values[key] = bound
        else:
            continue
        changed = True
    return changed


def bounded_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """``spec`` with its numbers within bounds (None: it needed no change)."""
    if not isinstance(spec, dict):
        return None
    fixed = dict(spec)
    changed = _bounded(fixed, _SPEC)
    policy = fixed.get("policy")
    if isinstance(policy, dict):
        fixed["policy"] = dict(policy)
        changed = _bounded(fixed["policy"], _POLICY) or changed
    return fixed if changed else None


def upgrade() -> None:
    services = sa.table(
        "services",
        sa.column("name", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("previous_spec", sa.JSON),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(services.c.name, services.c.spec, services.c.previous_spec))
    for name, spec, previous in rows.all():
        changes = {}
        if (fixed := bounded_spec(spec)) is not None:
            changes["spec"] = fixed
        if (fixed_previous := bounded_spec(previous)) is not None:
            changes["previous_spec"] = fixed_previous
        if changes:
            bind.execute(sa.update(services).where(services.c.name == name).values(**changes))


def downgrade() -> None:
    """Nothing to undo: the bounded values are valid for every earlier build too."""
