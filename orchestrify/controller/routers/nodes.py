"""/v1/nodes: worker hosts, and the agents' side of the protocol.

Agents register with the join token and get a node token back; with it they
heartbeat, long-poll their assignments and report what they observe.
"""

from __future__ import annotations

from fastapi import Depends, Query, Response

from orchestrify import __version__
from orchestrify.controller.border import api_router, errors
from orchestrify.controller.deps import (
    Admin,
    ControllerState,
    Credentials,
    NodeCaller,
    State,
    require_join,
    same_token,
)
from orchestrify.controller.logs import agent_key
from orchestrify.controller.views import NodeAssignments, json_answer
from orchestrify.errors import NotFound
from orchestrify.models import (
    Assignments,
    Heartbeat,
    Node,
    NodeCredentials,
    NodeRegistration,
    NodeRemoval,
    OrphanAdoption,
    OrphanPrune,
    ReplicaReports,
)
from orchestrify.protocol import PROTOCOL_VERSION
from orchestrify.store.replicas import ReportBatchItem

router = api_router(prefix="/v1/nodes", tags=["nodes"])

WATCH_CATCH_UP_S = 2.0
"""Longest wait, seconds, for the watch's view of every node to reach the version a
long-poll answered at once needs, before reading that node's alone."""

# The agents' routes first: a request is matched against the routes in order, and a
# fleet's heartbeats, long-polls and reports are most of the controller's requests.


@router.post("/{node_id}/heartbeat", response_model=Node)
async def heartbeat(node_id: str, hb: Heartbeat, state: NodeCaller) -> Node:
    """Seen at once on this controller's monotonic clock (what liveness is judged on);
    written to the store in the next batch (``heartbeat_flush_s``), or at once when it
    changes the node's state or address."""
    # Seen first: a cycle that judges meanwhile then finds the node alive, and the store
    # write restores a silent node's state.
    state.reconciler.liveness.seen(node_id)
    return await state.heartbeats.receive(node_id, hb)


@router.get("/{node_id}/assignments", response_model=Assignments)
async def watch_assignments(
    node_id: str,
    state: NodeCaller,
    version: int | None = Query(None, description="Last version seen; omit for an answer now."),
    timeout: float = Query(30.0, ge=0, le=300, description="Longest wait, seconds."),
) -> Assignments:
    """Long-poll: answers at once if the assignments' version differs from ``version``
    (unless this controller answered ``version`` to this node and its assignments are
    still the same), otherwise when they change or after ``timeout`` seconds."""
    wait = min(timeout, state.settings.watch_timeout_s)
    current = state.feed.version("spec")
    if version is None or version != current:
        # An agent that starts, registers, fails over or missed a change (each long-poll
        # that timed out while others' assignments changed): its own assignments, as of
        # ``current`` or later.
        current, mine = await _assignments_now(state, node_id, current)
        if version is None or not state.answered.unchanged(node_id, version, mine):
            return _answer(state, node_id, current, mine)
        baseline: NodeAssignments | None = mine
        as_of = current
    else:
        baseline, as_of = state.answered.sent(node_id, version), version
    # Woken only when this node's assignments change (AssignmentWatch), not at every
    # change of another node's.
    if await state.watch.wait(node_id, baseline=baseline, as_of=as_of, timeout=wait):
        current, found = state.watch.version or current, state.watch.view.get(node_id)
        if found is not None:
            return _answer(state, node_id, current, found)
    current, mine = await _assignments_now(state, node_id, state.feed.version("spec"))
    return _answer(state, node_id, current, mine)


async def _assignments_now(
    state: ControllerState, node_id: str, current: int
) -> tuple[int, NodeAssignments]:
    """Node ``node_id``'s assignments as of ``spec`` version ``current`` or later, and
    that version: what every answer but a woken long-poll's carries. From the watch's
    view, read once per version for every node, once it is that recent (it follows the
    version: a change's wait), where a thousand agents' long-polls coming back after a
    change each read their own (a sixth of the controller's worker threads' time at
    1,000 agents). Read alone for a node not in it (joined after that read) or when the
    watch cannot catch up (the store not answering it)."""
    watch = state.watch
    if await watch.caught_up(current, timeout=WATCH_CATCH_UP_S):
        found = watch.view.get(node_id)
        if found is not None and watch.version is not None:
            return watch.version, found
    return current, await _own_assignments(state, node_id)


async def _own_assignments(state: ControllerState, node_id: str) -> NodeAssignments:
    mine = await state.views.node_assignments(node_id)
    if mine is None:
        raise NotFound(f"no node with id {node_id!r}; register again")
    return mine


def _answer(
    state: ControllerState, node_id: str, version: int, mine: NodeAssignments
) -> Assignments:
    state.answered.record(node_id, version, mine)
    return Assignments(
        version=version,
        node=node_id,
        replicas=mine.replicas,
        cluster_id=state.store.cluster_id,
        prune=mine.prune,
    )


@router.post("/{node_id}/replicas", status_code=204)
async def report_replicas(node_id: str, body: ReplicaReports, state: NodeCaller) -> Response:
    """Answered once stored: with the other reports that arrive meanwhile, in one write
    (``GroupCommit``)."""
    await state.reports.submit(
        ReportBatchItem(
            node_id=node_id, reports=body.replicas, full=body.full, orphans=body.orphans
        )
    )
    return Response(status_code=204)


@router.post(
    "/register",
    response_model=NodeCredentials,
    dependencies=[Depends(require_join)],
    responses=errors(409),
)
def register_node(reg: NodeRegistration, state: State, creds: Credentials) -> NodeCredentials:
    """``known`` says whether this store knew the node: when it did not, the agent keeps
    the containers it already runs as orphans (``node adopt`` / ``node prune``).

    Idempotent: an agent sends the ``node_id`` and ``node_token`` it picked before its
    first registration (at least 32 characters, else 422) or saved from an earlier one,
    and a retry whose first answer was lost gets the same answer (same node, same token,
    same ``known``) without a write. Re-registering a node id this store knows needs
    that node's token (kept, not rotated) or the admin token (which gets a fresh one):
    with the join token alone it is a 409, recorded as an event at most once a minute
    per node name."""
    liveness = state.reconciler.liveness
    trusted = creds is not None and same_token(creds.credentials, state.admin_token)
    # A refused claim is not "seen"; a repeat of a registration is answered from a read.
    repeat = state.store.check_node_claim(reg, trusted=trusted)
    if reg.node_id:
        liveness.seen(reg.node_id)  # before the store says ready, so no cycle undoes it
    enrolled = repeat or state.store.enroll_node(reg, trusted=trusted, checked=True)
    liveness.seen(enrolled.node.id)
    return NodeCredentials(
        node_id=enrolled.node.id,
        node_token=enrolled.token,
        cluster_id=state.store.cluster_id,
        agent_key=agent_key(state.store.agent_secret, enrolled.node.id),
        known=enrolled.known,
        controller_version=__version__,
        protocol_version=PROTOCOL_VERSION,
    )


@router.get("", response_model=list[Node], dependencies=[Admin])
async def list_nodes(state: State) -> Response:
    """Every node, with the figures of the heartbeats received so far (those received
    since the last batched write included)."""
    received = state.heartbeats.received()  # before the read: none is missed by both
    return json_answer(state.heartbeats.listing(await state.views.nodes(), received))


@router.get("/{node_id}", response_model=Node, dependencies=[Admin])
async def get_node(node_id: str, state: State) -> Response:
    received = state.heartbeats.received()
    return json_answer(state.heartbeats.node(await state.views.nodes(), node_id, received))


@router.post("/{node_id}/drain", response_model=Node, dependencies=[Admin])
def drain_node(
    node_id: str,
    state: State,
    remove: bool = Query(
        False,
        description="Forget the node once no replica is left on it (`orchestrify node rm`).",
    ),
) -> Node:
    """Move the node's replicas elsewhere and place nothing new on it; with ``remove``,
    forget it once they have moved (``removing`` is true meanwhile)."""
    return state.store.set_node_draining(node_id, draining=True, remove=remove)


@router.post("/{node_id}/activate", response_model=Node, dependencies=[Admin])
def activate_node(node_id: str, state: State) -> Node:
    """Undo a drain: the node takes replicas again."""
    return state.store.set_node_draining(node_id, draining=False)


@router.post("/{node_id}/adopt", response_model=OrphanAdoption, dependencies=[Admin])
def adopt_orphans(node_id: str, state: State) -> OrphanAdoption:
    """Make the node's orphans replicas again without restarting them: each one whose
    service exists (by name) becomes a replica with its own replica id. The others stay
    orphans (``left``)."""
    return state.store.adopt_orphans(node_id)


@router.post("/{node_id}/prune", response_model=OrphanPrune, dependencies=[Admin])
def prune_orphans(node_id: str, state: State) -> OrphanPrune:
    """Have the node's agent remove its orphans (``Assignments.prune``)."""
    return state.store.prune_orphans(node_id)


@router.delete(
    "/{node_id}",
    response_model=NodeRemoval,
    dependencies=[Admin],
    responses=errors(409),
)
def remove_node(
    node_id: str,
    state: State,
    force: bool = Query(
        False, description="Forget it now even if it has replicas (they are placed elsewhere)."
    ),
) -> NodeRemoval:
    """Forget the node now (200; a GET of it is a 404 from then on). A node that still has
    replicas is a 409 without ``force``: nothing stops a replica without an order to, so
    drain it first with ``POST /v1/nodes/{id}/drain?remove=true`` (``orchestrify node rm``),
    which forgets it once they have moved."""
    before = len(state.store.list_replicas(node=node_id)) if force else 0
    node = state.store.delete_node(node_id, force=force)
    state.reconciler.liveness.forget(node.id)
    state.answered.forget(node.id)
    return NodeRemoval(
        node=node.id,
        name=node.name,
        replicas_forgotten=before,
        message=f"node {node.name} removed"
        + (f"; its {before} replica(s) are placed elsewhere" if before else ""),
    )
