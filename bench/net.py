"""Loopback ports for what a lab starts (controllers, edges, proxies, PostgreSQL).

Runtime dependencies only: the benchmarks and the tests both take it.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
