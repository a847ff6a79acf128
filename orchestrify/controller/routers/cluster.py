"""/v1/cluster: the controllers sharing this store, which one leads, since when, and the
epoch of its lease. Any controller answers the same (it reads the store)."""

from __future__ import annotations

from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State
from orchestrify.store.leases import ClusterView

router = api_router(prefix="/v1/cluster", tags=["cluster"], dependencies=[Admin])


@router.get("", response_model=ClusterView)
def cluster_view(state: State) -> ClusterView:
    """Who leads (``leader``, null while no controller holds the lease), at which
    ``epoch``, until when unless renewed, and every controller that ever ran on this
    store: ``leader``, ``follower``, or ``gone`` when it has not tried or renewed the
    lease for longer than one lease period (``lease_s``)."""
    return state.leadership.leases.cluster(gone_after_s=state.settings.lease_s)
