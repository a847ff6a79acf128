"""orchestrify: self-healing and autoscaling for HTTP services on plain Docker hosts.

Three reconcilers live in this package: the controller (state, API, decisions), the
agent (one per Docker host) and the edge (Nginx beside it). See README.md.
"""

from orchestrify.errors import (
    Conflict,
    InvalidSpec,
    NodeUnreachable,
    NotFound,
    OrchestrifyError,
    PlaybookFailed,
    Unauthorized,
)

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "InvalidSpec",
    "NodeUnreachable",
    "NotFound",
    "OrchestrifyError",
    "PlaybookFailed",
    "Unauthorized",
    "__version__",
]
