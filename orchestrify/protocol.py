"""Which build and which protocol a peer speaks, announced on every request and answer.

The agent, the edge and the CLI send their package version and ``PROTOCOL_VERSION`` in
request headers; the controller answers with its own. A peer whose protocol cannot be
served is refused with HTTP 426 and a message naming both versions: never by acting on
a message it might misread (for the agent: never by deleting a container).

The protocol number changes only when a peer of the previous number would do harm:
2 added the cluster id, registration's ``known``, orphans, ``prune`` and ``spec_hash``,
without which an agent removes what a controller with a new store does not know.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrify import __version__

PROTOCOL_VERSION = 2
# The oldest peer protocol this build serves. A request that names an older one is
# refused; a request that names none (curl, Prometheus, Alertmanager) is served.
MIN_PROTOCOL_VERSION = 2
# What a controller that sends no protocol header speaks (builds from before headers).
UNANNOUNCED_PROTOCOL = 1

HEADER_VERSION = "X-Orchestrify-Version"
HEADER_PROTOCOL = "X-Orchestrify-Protocol"
HEADER_COMPONENT = "X-Orchestrify-Component"


def announce(component: str) -> dict[str, str]:
    """The headers a peer sends with every request (``component``: agent, edge, cli...)."""
    return {
        HEADER_VERSION: __version__,
        HEADER_PROTOCOL: str(PROTOCOL_VERSION),
        HEADER_COMPONENT: component,
    }


def peer_protocol(headers: Mapping[str, str]) -> int | None:
    """The protocol a peer named in ``headers``; None when it named none (or nonsense)."""
    raw = headers.get(HEADER_PROTOCOL)
    if raw is None:
        return None
    raw = raw.strip()
    return int(raw) if raw.isdigit() else None


def refusal(
    *, peer: str, peer_version: str | None, peer_protocol: int, minimum: int = MIN_PROTOCOL_VERSION
) -> str | None:
    """Why a peer of ``peer_protocol`` cannot be served, naming both sides; None: it can."""
    if peer_protocol >= minimum:
        return None
    return (
        f"protocol mismatch: the {peer} ({peer_version or 'unknown version'}) speaks "
        f"protocol {peer_protocol}, and this orchestrify {__version__} speaks protocol "
        f"{PROTOCOL_VERSION} (serves {minimum} and newer); upgrade the {peer}. "
        "Nothing was changed or removed."
    )


__all__ = [
    "HEADER_COMPONENT",
    "HEADER_PROTOCOL",
    "HEADER_VERSION",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "UNANNOUNCED_PROTOCOL",
    "announce",
    "peer_protocol",
    "refusal",
]
