"""The fleet's log collector, as the agent sees it: where to send the lines of services
that chose no log driver of their own.

With ``--log-collector udp://HOST:PORT`` every container of a service
left at the default (``json-file``, no options) runs with Docker's ``syslog`` driver
instead, in RFC 5424 with the service's name as its tag, which the ``log_collector``
role's rsyslog on the control host files as ``<service>.log``. Docker 20.10 keeps a
local copy of what a ``syslog`` container writes ("dual logging"), so ``orchestrify
service logs`` still reads it; the copy is bounded like the default driver's files.

The choice is the agent's, not part of the service's spec: the containers' spec label
(``Assignment.spec_hash``) stays as the controller computed it, so turning the collector
on or off replaces no running container; new ones get the new logging.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from orchestrify.errors import InvalidSpec
from orchestrify.logdrivers import DEFAULT_LOG_DRIVER

__all__ = ["ContainerLogging", "container_logging", "parse_log_collector"]

# UDP only: Docker's syslog driver connects a TCP address when a container starts and
# refuses to start it if nobody answers, so a collector that is down would keep every
# replica of the node from being replaced. Over UDP lines are lost instead, never a
# replica. (A service may still choose tcp:// for itself with --log-opt.)
COLLECTOR_SCHEMES = ("udp",)
# A DNS name or an IPv4 address (IPv6 comes in brackets, which urlsplit takes off).
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def parse_log_collector(address: str) -> str:
    """``address`` checked as ``udp://HOST:PORT`` (the form of
    Docker's ``syslog-address``), returned as given; ``InvalidSpec`` says what is wrong.

    The port is required (Docker would default to 514; the inventory says it once)."""
    value = address.strip()
    example = "e.g. udp://10.0.0.10:514"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidSpec(
            f"log collector {value!r}: not udp://HOST:PORT ({example})", field="log_collector"
        ) from None
    host = parts.hostname or ""
    if parts.scheme not in COLLECTOR_SCHEMES:
        problem = (
            "the scheme must be udp:// (over tcp:// a collector that is down would keep "
            "replicas from starting)"
        )
    elif not host or not (_HOST.match(host) or ":" in host):
        problem = "a host is required"
    elif port is None or not 1 <= port <= 65535:
        problem = "a port from 1 to 65535 is required"
    elif parts.path or parts.query or parts.fragment or parts.username or parts.password:
        problem = "only a scheme, a host and a port are allowed"
    else:
        return value
    raise InvalidSpec(f"log collector {value!r}: {problem} ({example})", field="log_collector")


@dataclass(frozen=True, kw_only=True)
class ContainerLogging:
    """The log driver and options one container runs with."""

    driver: str
    opts: dict[str, str] = field(default_factory=dict)


def container_logging(
    *,
    service: str,
    log_driver: str,
    log_opts: Mapping[str, str],
    collector: str | None,
    local_max_size: str,
    local_max_file: int,
) -> ContainerLogging:
    """The logging of a container of ``service``: the service's own choice, unless it
    made none (``json-file`` without options) and the node has a ``collector``.

    Then Docker's syslog driver sends each line to the collector in RFC 5424 with the
    service's name as APP-NAME (what the collector files it by). Its local copy for
    ``docker logs`` is bounded by ``local_max_size`` x ``local_max_file``, the node's
    json-file rotation, instead of Docker's own 20m x 5 for that copy.
    """
    if collector is None or log_driver != DEFAULT_LOG_DRIVER or log_opts:
        return ContainerLogging(driver=log_driver, opts=dict(log_opts))
    return ContainerLogging(
        driver="syslog",
        opts={
            "syslog-address": collector,
            "syslog-format": "rfc5424",
            "tag": service,
            "cache-max-size": local_max_size,
            "cache-max-file": str(local_max_file),
        },
    )
