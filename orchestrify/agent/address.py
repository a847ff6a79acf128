"""This host's address as the controller's side of the network sees it.

The address a replica publishes on is the one the kernel would send from towards the
controller: a UDP socket "connected" to the controller's host picks that route and
source address without sending a packet. Asked again at every heartbeat, it follows a
host whose address changes (DHCP, a restarted VM) unless the operator pinned one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from orchestrify.errors import NodeUnreachable

__all__ = ["detect_address", "is_loopback_host"]


def _host_port(controller_url: str) -> tuple[str, int]:
    parts = urlsplit(controller_url)
    if not parts.hostname:
        raise NodeUnreachable(f"no host in the controller URL {controller_url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise NodeUnreachable(f"bad port in the controller URL {controller_url!r}") from exc
    return parts.hostname, port


def detect_address(controller_urls: str | Sequence[str]) -> str:
    """The source address this host uses towards the controller's host.

    ``controller_urls``: one URL, ``URL1,URL2``, or a list; the first whose host resolves
    and has a route gives the address (the agent puts the controller it uses first), so
    one controller on an unreachable network does not leave the agent without one.
    """
    urls = controller_urls.split(",") if isinstance(controller_urls, str) else controller_urls
    errors: list[NodeUnreachable] = []
    for url in urls:
        try:
            return _address_towards(url.strip())
        except NodeUnreachable as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise NodeUnreachable("; ".join(str(e) for e in errors) or "no controller URL given")


def _address_towards(controller_url: str) -> str:
    host, port = _host_port(controller_url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise NodeUnreachable(f"cannot resolve the controller's host {host!r}: {exc}") from exc
    last: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.connect(sockaddr)  # UDP: picks a route and a source; sends nothing
                address = str(sock.getsockname()[0])
        except OSError as exc:
            last = exc
            continue
        return address.split("%", 1)[0]  # an IPv6 zone id is local to this host
    raise NodeUnreachable(f"no route to the controller's host {host!r}: {last}")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback literal (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
