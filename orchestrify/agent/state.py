"""What the agent keeps on disk between restarts: its identity (with the cluster id it
registered with), its last assignments and its orphans.

The identity file holds the node token, so it is written 0600, atomically. A new agent
writes the node id and token it picks *before* it first registers (``pending``), so a
crash or a lost answer between sending and hearing back reuses them: the registration
is repeated, not made twice.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from orchestrify.models import Assignment

log = logging.getLogger(__name__)

IDENTITY_FILE = "node.json"
ASSIGNMENTS_FILE = "assignments.json"
ORPHANS_FILE = "orphans.json"
_assignments = TypeAdapter(list[Assignment])


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    node_token: str = field(repr=False)  # never in a log line or a traceback
    # The cluster (controller store) the node registered with; None in state files of
    # older builds. A controller of another cluster is a stranger: see reconcile.py.
    cluster_id: str | None = None
    # Picked by this agent and sent, no answer yet: no container carries this id, and no
    # controller has confirmed it (False in state files of older builds).
    pending: bool = False


def new_identity() -> NodeIdentity:
    """A node id and token picked by the agent for its first registration: random, as the
    controller would pick them (``secrets``; the token 43 characters, at least the 32
    the controller asks of a proposed one)."""
    return NodeIdentity(
        node_id=secrets.token_hex(6), node_token=secrets.token_urlsafe(32), pending=True
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_identity(state_dir: Path) -> NodeIdentity | None:
    path = state_dir / IDENTITY_FILE
    try:
        data = json.loads(path.read_text())
        cluster = data.get("cluster_id")
        return NodeIdentity(
            node_id=str(data["node_id"]),
            node_token=str(data["node_token"]),
            cluster_id=str(cluster) if cluster else None,
            pending=data.get("pending") is True,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable state file", extra={"path": str(path), "error": exc})
        return None


def save_identity(state_dir: Path, identity: NodeIdentity) -> None:
    text = json.dumps(
        {
            "node_id": identity.node_id,
            "node_token": identity.node_token,
            "cluster_id": identity.cluster_id,
            "pending": identity.pending,
        }
    )
    _write_private(state_dir / IDENTITY_FILE, text + "\n")


def load_assignments(state_dir: Path) -> list[Assignment] | None:
    """The last assignments seen, so healing goes on while the controller is away."""
    path = state_dir / ASSIGNMENTS_FILE
    try:
        return _assignments.validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        log.warning("ignoring unreadable assignments", extra={"path": str(path), "error": exc})
        return None


def save_assignments(state_dir: Path, assignments: list[Assignment]) -> None:
    _write_private(state_dir / ASSIGNMENTS_FILE, _assignments.dump_json(assignments).decode())


def load_orphans(state_dir: Path) -> set[str]:
    """The container ids the agent keeps as orphans, so a restart keeps them orphans."""
    path = state_dir / ORPHANS_FILE
    try:
        data = json.loads(path.read_text())
        return {str(cid) for cid in data["containers"]}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable orphans file", extra={"path": str(path), "error": exc})
        return set()


def save_orphans(state_dir: Path, container_ids: set[str]) -> None:
    text = json.dumps({"containers": sorted(container_ids)})
    _write_private(state_dir / ORPHANS_FILE, text + "\n")
