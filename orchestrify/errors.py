"""One root error for everything orchestrify raises, with subclasses a caller can act on.

Adapters (Docker, HTTP, nginx, ansible-runner) translate foreign exceptions into these
at their border, raising ``from`` the cause, so nothing above them sees a foreign type.
"""

from __future__ import annotations


class OrchestrifyError(Exception):
    """Base of every error orchestrify raises on purpose."""


class NotFound(OrchestrifyError):
    """A named or numbered resource does not exist."""


class Conflict(OrchestrifyError):
    """The request clashes with what is stored (a name taken, a node draining...)."""


class InvalidSpec(OrchestrifyError):
    """Input failed validation. ``field`` names the offending field when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StoreUnavailable(OrchestrifyError):
    """The store cannot take a write or answer a read now (locked, disk I/O error, gone):
    the API answers 503 with Retry-After, the caller tries again later."""


class WriteConflict(StoreUnavailable):
    """Two writers raced for the same rows and the database gave up on this one (a
    PostgreSQL serialization failure or deadlock), even after the store's own retries.
    Nothing was written; like any store that cannot write now it is a 503 with
    Retry-After (not a 409: Alertmanager and the agents retry a 5xx, and the same
    request then goes through)."""


class Fenced(Conflict):
    """A write of a leader-only loop (reconciler, alert decisions, scaling, liveness,
    the job runner) made by a controller that no longer holds the leader lease at the
    epoch it was elected with: refused in the same transaction, so a deposed leader that
    wakes up late changes nothing."""


class LogsUnreadable(Conflict):
    """Docker cannot read a container's logs back: its logging driver sends them
    elsewhere (syslog, gelf, fluentd without Docker's local cache). ``log_driver`` and
    ``log_address`` say where they went, so the caller can look there (HTTP 409)."""

    def __init__(self, message: str, *, log_driver: str, log_address: str | None) -> None:
        super().__init__(message)
        self.log_driver = log_driver
        self.log_address = log_address


class TooLarge(OrchestrifyError):
    """A request asks for more work than the controller takes at once (HTTP 413)."""


class Busy(OrchestrifyError):
    """Too much work of this kind is already queued (HTTP 429 with Retry-After): the
    request was fine, and is taken again once some of it has run."""

    retry_after_s = 5


class Unauthorized(OrchestrifyError):
    """A missing or wrong credential."""


class NodeUnreachable(OrchestrifyError):
    """A node, controller or other peer did not answer."""


class CertificateRejected(NodeUnreachable):
    """TLS with the controller failed: its certificate is not signed by the CA this side
    trusts, or names another host. A NodeUnreachable, so the agent and the edge retry it
    like an absent controller (the containers keep running) and never act on it."""


class DockerFailure(OrchestrifyError):
    """The Docker engine refused or failed an operation."""


class ImagePullFailed(DockerFailure):
    """An image could not be pulled (missing, no registry, auth)."""


class NginxFailure(OrchestrifyError):
    """nginx rejected a configuration or failed to reload."""


class PlaybookFailed(OrchestrifyError):
    """An Ansible run could not start or ended in failure."""


class ControllerError(OrchestrifyError):
    """The controller answered with an error the client cannot map more precisely."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class VersionMismatch(OrchestrifyError):
    """A peer speaks a protocol version this build cannot serve (HTTP 426); the message
    names both versions. Retried, never acted on."""


class MetricsUnavailable(OrchestrifyError):
    """Prometheus could not answer a query of the status page's charts: not reachable,
    too slow, an error answer, or one that cannot be read. ``unreachable`` when nothing
    came back at all (refused, timed out): the next queries are then not even tried for
    a while. The page says so and stays up."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
