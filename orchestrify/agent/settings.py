"""Agent settings: every field says its unit and why its default was chosen."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from orchestrify.agent.address import is_loopback_host

DEFAULT_METRICS_PORT = 18081  # next to the controller's 18080
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"


def default_state_dir() -> Path:
    from orchestrify.controller.settings import default_data_dir

    return default_data_dir() / "agent"


@dataclass(frozen=True, kw_only=True)
class HealSettings:
    """How the agent probes replicas and replaces sick ones."""

    fault_interval_s: float = 1.0
    """Seconds between health probes of a running replica (the seed tool probed every 1 s)."""
    probe_timeout_s: float = 0.8
    """Seconds a probe may take; below fault_interval so probes never pile up."""
    unhealthy_threshold: int = 3
    """Consecutive failed probes before a replica is unhealthy (Kubernetes' default: 3)."""
    startup_probe_interval_s: float = 0.1
    """Seconds between probes of a just-started replica, so it turns healthy quickly."""
    startup_grace_s: float = 10.0
    """Seconds a new container may fail its probes before the failures count."""
    backoff_s: tuple[float, ...] = (0, 1, 2, 4, 8, 16, 30)
    """Delay before the n-th replacement within the window; the last value is the cap."""
    max_replacements: int = 5
    """Replacements within ``replacement_window_s`` before the replica is reported failed."""
    replacement_window_s: float = 120.0
    """Window for max_replacements; a replica healthy longer than this starts afresh."""
    crashloop_backoff_s: tuple[float, ...] = (10, 20, 40, 80, 160, 300)
    """While the controller is unreachable nobody can move a replica the agent gave up on
    (``failed``), so the agent keeps restarting it in place after these delays; the last
    is the cap (the kubelet's crash-loop backoff: from 10 s, doubling, up to 5 min)."""

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before replacement number ``attempt`` (0-based) in the window."""
        if not self.backoff_s:
            return 0.0
        return float(self.backoff_s[min(max(attempt, 0), len(self.backoff_s) - 1)])

    def crashloop_backoff(self, attempt: int) -> float:
        """Seconds before crash-loop restart number ``attempt`` (0-based) of a failed
        replica while the controller is unreachable."""
        if not self.crashloop_backoff_s:
            return 0.0
        steps = self.crashloop_backoff_s
        return float(steps[min(max(attempt, 0), len(steps) - 1)])


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """Everything `orchestrify agent` takes from its flags."""

    controller_url: str
    """The controller's URL, or several separated by commas (``URL1,URL2``) that the
    agent fails over between (see ``orchestrify.client.ControllerRing``)."""
    join_token: str = field(repr=False)  # never in a log line or a traceback
    name: str
    advertise_address: str | None = None
    """Pinned address that Nginx and the controller reach replicas at; None: detected (the
    source address towards the controller) at start and at every heartbeat, so a host
    whose address changes brings its replicas along."""
    docker_url: str = DEFAULT_DOCKER_URL
    state_dir: Path = field(default_factory=default_state_dir)
    metrics_port: int | None = DEFAULT_METRICS_PORT
    """Port of the agent's /metrics; 0 picks a free one, None serves none (tests)."""
    heal: HealSettings = field(default_factory=HealSettings)
    heartbeat_interval_s: float = 5.0
    """Seconds between heartbeats; a third of the controller's 15 s node timeout."""
    watch_timeout_s: float = 30.0
    """Longest long-poll, seconds (the protocol's 30 s)."""
    full_report_interval_s: float = 30.0
    """Seconds between full reports (the protocol asks for at least every 30 s)."""
    controller_backoff_s: tuple[float, ...] = (0.5, 1, 2, 3)
    """Delays between retries while the controller is unreachable; the last is the cap.
    Kept short so that a returning controller hears of what changed within seconds (a
    retry costs one small request); each delay is spread by +-20 % so a fleet that lost
    its controller does not come back in lockstep."""
    ca: Path | None = None
    """PEM file of the CA that signed the controller's certificate (https URLs); None: the
    system's trust store. A certificate it refuses is retried like an absent controller."""
    container_labels: dict[str, str] = field(default_factory=dict)
    """Extra labels on every container (tests mark theirs for clean-up)."""
    log_max_size: str = "10m"
    """json-file rotation: size of one log file (Docker's own unit syntax)."""
    log_max_file: int = 3
    """json-file rotation: number of files kept."""
    log_collector: str | None = None
    """``udp://HOST:PORT`` or ``tcp://HOST:PORT`` of the fleet's log collector (role
    log_collector); None: none. Services that chose no log driver of their own send their
    lines there with Docker's syslog driver (see ``orchestrify.agent.log_collector``);
    checked by ``parse_log_collector`` before it gets here."""

    @property
    def pinned(self) -> bool:
        return self.advertise_address is not None

    @property
    def bind_address(self) -> str:
        """Where ports and /metrics listen: loopback stays loopback, anything else is all.
        Unpinned, controllers all on loopback mean this host is alone: loopback too."""
        if self.advertise_address is None:
            hosts = [urlsplit(u.strip()).hostname or "" for u in self.controller_url.split(",")]
            return "127.0.0.1" if all(is_loopback_host(h) for h in hosts) else "0.0.0.0"
        try:
            if ipaddress.ip_address(self.advertise_address).is_loopback:
                return self.advertise_address
        except ValueError:
            pass
        return "0.0.0.0"
