"""The small view model the Nginx templates see, built from the controller's upstream list.

Templates never see API payloads or SDK objects: only services with their servers
(address, replica, node, state). Building the view also validates what goes into the
config, so a strange address from an agent can never produce a broken Nginx file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrify.models import SERVICE_NAME, Upstreams

log = logging.getLogger(__name__)

# host:port with a DNS name, IPv4, or bracketed IPv6 host: nothing Nginx could misread.
_ADDRESS = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):\d{1,5}$"
)

# A replica id as the controller makes them (SERVICE-HEX): it goes into the config (a
# comment in upstreams.conf, a value of the access log's map in nginx.conf).
_REPLICA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ServerView:
    """One upstream server line: a healthy replica."""

    address: str
    replica: str
    node: str
    state: str = "healthy"


@dataclass(frozen=True)
class ServiceView:
    name: str
    upstream: str  # the Nginx upstream block's name
    drain_s: float
    servers: tuple[ServerView, ...]


@dataclass(frozen=True)
class EdgeView:
    """Everything the templates render from, besides the edge's own settings."""

    services: tuple[ServiceView, ...] = field(default_factory=tuple)

    def replica_ids(self) -> frozenset[str]:
        return frozenset(s.replica for svc in self.services for s in svc.servers)

    def fingerprint(self, settings: Mapping[str, Any]) -> str:
        """A short id of view + settings: the same inputs always give the same config."""
        blob = json.dumps({"view": asdict(self), "settings": settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def valid_address(address: str) -> bool:
    if not _ADDRESS.fullmatch(address):  # match: `$` would let a final "\n" through
        return False
    port = int(address.rsplit(":", 1)[1])
    return 1 <= port <= 65535


def build_view(upstreams: Upstreams) -> EdgeView:
    """Turn ``GET /v1/upstreams`` into the view, sorted so the render is stable.

    Replicas with an address Nginx could not parse, or an id that is not one, are left
    out (and logged): one bad report must not block every other service's update.
    """
    services = []
    for svc in sorted(upstreams.services, key=lambda s: s.name):
        if not SERVICE_NAME.match(svc.name):
            log.warning("service name not usable in nginx, skipped", extra={"service": svc.name})
            continue
        servers = []
        seen: set[str] = set()
        for rep in sorted(svc.replicas, key=lambda r: (r.address, r.id)):
            if not valid_address(rep.address):
                log.warning(
                    "replica address not usable in nginx, left out",
                    extra={"service": svc.name, "replica": rep.id, "address": rep.address},
                )
                continue
            if not _REPLICA_ID.fullmatch(rep.id):
                log.warning(
                    "replica id not usable in nginx, left out",
                    extra={"service": svc.name, "replica": rep.id, "address": rep.address},
                )
                continue
            if rep.address in seen:  # two replicas cannot answer on one address
                continue
            seen.add(rep.address)
            servers.append(
                ServerView(address=rep.address, replica=rep.id, node=rep.node_name or rep.node)
            )
        services.append(
            ServiceView(
                name=svc.name,
                upstream="orchestrify_" + svc.name.replace("-", "_"),
                drain_s=svc.drain_s,
                servers=tuple(servers),
            )
        )
    return EdgeView(services=tuple(services))


@dataclass(frozen=True)
class ReplicaRef:
    replica: str
    node: str


class AddressBook:
    """Maps (service, upstream address) to the replica and node behind it.

    Entries are kept after a replica leaves the upstream list (up to ``capacity``):
    requests it finishes while draining are still logged under its name.
    """

    def __init__(self, *, capacity: int = 10_000) -> None:
        self._refs: dict[tuple[str, str], ReplicaRef] = {}
        self._capacity = capacity
        self.generation = 0  # bumped by every update (caches of lookups compare it)

    def update(self, view: EdgeView) -> None:
        for svc in view.services:
            for s in svc.servers:
                key = (svc.name, s.address)
                self._refs.pop(key, None)  # re-insert: most recent last
                self._refs[key] = ReplicaRef(replica=s.replica, node=s.node)
        while len(self._refs) > self._capacity:
            self._refs.pop(next(iter(self._refs)))
        self.generation += 1

    def lookup(self, service: str, address: str) -> ReplicaRef | None:
        return self._refs.get((service, address))


def removed_replicas(before: EdgeView, after: EdgeView) -> Sequence[str]:
    """Replicas that left: the edge reloads for them without waiting out a burst."""
    return sorted(before.replica_ids() - after.replica_ids())


def keep_other_clusters(last: Upstreams | None, new: Upstreams) -> Upstreams:
    """``new``, plus the services Nginx serves for another cluster that ``new``'s cluster
    does not serve (absent, or without a replica).

    A controller on a new or wiped store answers with another ``cluster_id`` and none of
    the services that still run (their containers are orphans its agents keep running):
    rendering that answer as it is would empty Nginx. Such services stay, with their last
    replicas and ``kept_from_cluster`` set, until the new cluster serves a service of the
    same name with at least one replica (re-created, or its orphans adopted).
    """
    if last is None or new.cluster_id is None:
        return new
    served = {s.name for s in new.services if s.replicas}
    kept = []
    for svc in last.services:
        origin = svc.kept_from_cluster or last.cluster_id
        if origin is None or origin == new.cluster_id or not svc.replicas:
            continue
        if svc.name not in served:
            kept.append(svc.model_copy(update={"kept_from_cluster": origin}))
    if not kept:
        return new
    names = {s.name for s in kept}
    services = [s for s in new.services if s.name not in names] + kept
    return new.model_copy(update={"services": sorted(services, key=lambda s: s.name)})


def kept_services(upstreams: Upstreams) -> list[str]:
    """Names of the services kept from another cluster (see ``keep_other_clusters``)."""
    return sorted(s.name for s in upstreams.services if s.kept_from_cluster)
