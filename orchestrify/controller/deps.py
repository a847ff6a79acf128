"""Dependencies shared by the routers: the app's state and the two kinds of credential."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrify.controller.alerts import AlertProcessor
from orchestrify.controller.batching import GroupCommit
from orchestrify.controller.feed import ChangeFeed
from orchestrify.controller.heartbeats import HeartbeatBuffer
from orchestrify.controller.leadership import Leadership
from orchestrify.controller.metrics import ControllerMetrics
from orchestrify.controller.reconcile import Reconciler
from orchestrify.controller.retention import HistoryPruner
from orchestrify.controller.settings import ControllerSettings
from orchestrify.controller.views import AnsweredAssignments, ReadViews
from orchestrify.controller.watch import AssignmentWatch
from orchestrify.errors import NotFound, Unauthorized
from orchestrify.jobs.runner import JobRunner
from orchestrify.store import Store
from orchestrify.store.listen import ChangeListener
from orchestrify.store.replicas import ReportBatchItem


@dataclass
class ControllerState:
    settings: ControllerSettings
    store: Store
    feed: ChangeFeed
    reconciler: Reconciler
    metrics: ControllerMetrics
    admin_token: str = field(repr=False)  # never in a log line or a traceback
    join_token: str = field(repr=False)
    jobs: JobRunner
    alerts: AlertProcessor
    history: HistoryPruner
    leadership: Leadership
    views: ReadViews
    heartbeats: HeartbeatBuffer
    reports: GroupCommit[ReportBatchItem]
    watch: AssignmentWatch  # wakes each agent's long-poll when its node's assignments change
    # What each node's long-poll was last answered (see AnsweredAssignments).
    answered: AnsweredAssignments = field(default_factory=AnsweredAssignments)
    # Tells ``feed`` of the changes other controllers commit (PostgreSQL; None on SQLite).
    changes: ChangeListener | None = None


# The dependencies that do not block are ``async def``: FastAPI runs a plain ``def``
# dependency in its thread pool, a hop that costs more than the check itself.
async def get_state(request: Request) -> ControllerState:
    state: ControllerState = request.app.state.controller
    return state


State = Annotated[ControllerState, Depends(get_state)]
_bearer = HTTPBearer(
    auto_error=False, description="Admin token (or a node's token for its own node)."
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of any two strings (``compare_digest`` refuses non-ASCII
    text with a TypeError, and a header may carry any byte)."""
    return secrets.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def require_admin(state: State, creds: Credentials) -> None:
    if creds is None or not same_token(creds.credentials, state.admin_token):
        raise _unauthorized("a valid admin bearer token is required (--token / ORCHESTRIFY_TOKEN)")


async def require_join(state: State, creds: Credentials) -> None:
    ok = creds is not None and (
        same_token(creds.credentials, state.join_token)
        or same_token(creds.credentials, state.admin_token)
    )
    if not ok:
        raise _unauthorized("a valid join token is required (--join-token)")


async def require_node(node_id: str, state: State, creds: Credentials) -> None:
    """The node's own token, or the admin token. Checked against the node tokens cached
    per store version (``ReadViews``): no thread, no query per agent request."""
    if creds is None:
        raise _unauthorized("a node token is required")
    if same_token(creds.credentials, state.admin_token):
        return
    ok = await state.views.node_token_ok(node_id, creds.credentials)
    if ok is None:
        raise _unauthorized(str(NotFound(f"no node with id {node_id!r}; register again")))
    if not ok:
        raise _unauthorized(str(Unauthorized("wrong node token")))


async def node_state(node_id: str, request: Request, creds: Credentials) -> ControllerState:
    """``require_node`` and ``get_state`` as one dependency, for the agents' routes: a
    fleet's heartbeats, long-polls and reports are most of the controller's requests, and
    FastAPI's work per dependency it resolves was most of a heartbeat's CPU (with the
    routers' query check, 5 resolved with the node check as a route dependency beside
    ``State``, 3 this way)."""
    state: ControllerState = request.app.state.controller
    await require_node(node_id, state, creds)
    return state


NodeCaller = Annotated[ControllerState, Depends(node_state)]
"""The controller's state, for a request made with the node's token or the admin token."""
Admin = Depends(require_admin)
