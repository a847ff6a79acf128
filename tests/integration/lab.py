"""Lab hosts: Debian containers that boot systemd and sshd, so Ansible can provision them
over SSH exactly as it would a real machine.

The images are built here from nothing but Debian's mirror (no registry is reachable):
``debootstrap --variant=minbase bookworm`` -> ``docker import`` (the *base* image), then
``docker build`` adds systemd, sshd and python3 (the *host* image). Both are cached by tag;
the host image also carries a hash of its recipe, so changing the recipe rebuilds it.

Every container started here carries ``orchestrify.test=1`` plus a per-lab session label,
so :func:`remove_lab_hosts` removes exactly what this lab started and nothing of anyone
else's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

TEST_LABEL = "orchestrify.test"
SESSION_LABEL = "orchestrify.lab.session"
BASE_IMAGE = "orchestrify-lab/base:bookworm"
HOST_IMAGE = "orchestrify-lab/host:bookworm"
RECIPE_LABEL = "orchestrify.lab.recipe"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# python3-apt lets ansible.builtin.apt run without installing it on first use;
# python3-venv is what the orchestrify roles build their virtualenv with. Both are here
# only to keep each test run short: the roles install them too when they are missing.
# For the same reason the .debs the roles install are downloaded (not installed) into
# apt's cache: each test still installs, configures and starts them for real, it just
# does not fetch them from the mirror every time. (openssl, openssh-client and
# python3-venv, which the roles also ask for, are installed already: ca-certificates,
# openssh-server and the line above bring them.)
PRELOADED_DEBS = (
    "docker.io prometheus prometheus-alertmanager prometheus-node-exporter nginx"
    " postgresql-15 postgresql-client-15"
)
# The roles' apt tasks update the package lists when they are older than an hour
# (`update_cache` with `cache_valid_time`). Ansible's apt module takes their age from
# /var/lib/apt/periodic/update-success-stamp, else from the mtime of /var/lib/apt/lists,
# which an `apt-get update` that finds nothing new leaves as it was
# (ansible/ansible#27798): on plain Debian every apt task then fetches the lists again,
# about a second each, some 50 times a session. Ubuntu's update-notifier-common touches
# that stamp after each successful update; the lab hosts do the same, so the first apt
# task on a fresh host still updates the lists and the later ones trust them for an hour.
APT_UPDATE_STAMP_HOOK = (
    'APT::Update::Post-Invoke-Success {"touch /var/lib/apt/periodic/update-success-stamp'
    ' 2>/dev/null || true";};'
)
HOST_DOCKERFILE = f"""\
FROM {BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive container=docker
RUN apt-get update \\
 && apt-get install -y --no-install-recommends systemd systemd-sysv openssh-server \\
      python3 python3-apt python3-venv ca-certificates iproute2 \\
 && apt-get install -y --no-install-recommends --download-only {PRELOADED_DEBS} \\
 && echo '{APT_UPDATE_STAMP_HOOK}' > /etc/apt/apt.conf.d/15update-stamp \\
 && systemctl enable ssh \\
 && mkdir -p /root/.ssh && chmod 700 /root/.ssh
# systemd stops cleanly on SIGRTMIN+3, not on docker's default SIGTERM.
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
"""

# The run flags from shared/ENVIRONMENT.md. Checked on this machine, whose engine runs
# cgroup v1 with the host cgroup namespace: systemd 252 in the container finds its own
# cgroup (/docker/<id>) in the bind-mounted hierarchy and boots to "running" with no
# failed unit, so the documented flags need no change here.
# - no --privileged: CAP_SYS_RESOURCE is not in this machine's bounding set, so
#   --privileged fails ("unable to apply caps"); ALL minus SYS_RESOURCE is the most we get.
# - the anonymous volume on /var/lib/docker gives the engine installed *inside* the lab
#   host a real filesystem, so it can use overlay2 instead of overlay-on-overlay.
LAB_RUN_FLAGS: tuple[str, ...] = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "-v", "/var/lib/docker",
)  # fmt: skip


class LabError(RuntimeError):
    """A lab host could not be built, started or reached."""


@dataclass(frozen=True)
class LabHost:
    """One running lab host: its container name and its address on the docker bridge."""

    name: str
    address: str


@dataclass(frozen=True)
class SSHKey:
    private: Path
    public: Path


def _run(
    args: Sequence[str],
    *,
    input_text: str | None = None,
    timeout: float = 600,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(args),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{args[0]} failed: {exc}") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(args[:4])}... exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc


def docker(*args: str, input_text: str | None = None, check: bool = True) -> str:
    """Run a docker CLI command and return its stdout."""
    return _run(["docker", *args], input_text=input_text, check=check).stdout.strip()


def docker_available() -> bool:
    return (
        shutil.which("docker") is not None
        and _run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=20
        ).returncode
        == 0
    )


def image_label(tag: str, label: str) -> str | None:
    """The value of ``label`` on image ``tag``; None when the image does not exist."""
    proc = _run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', tag],
        check=False,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip()


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (works where only that mirror is reachable)."""
    if env := os.environ.get("ORCHESTRIFY_LAB_MIRROR"):
        return env
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        # deb822 ("URIs: http://…/debian") and one-line ("deb http://…/debian bookworm main")
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def build_base_image(*, suite: str = "bookworm", tag: str = BASE_IMAGE) -> None:
    """debootstrap a minimal Debian and import it as ``tag`` (about 35 s)."""
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="orchestrify-lab-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", suite, str(rootfs), apt_mirror()], timeout=900)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                ["docker", "import", "-", tag], stdin=tar.stdout, capture_output=True, timeout=300
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise LabError(f"docker import failed: {imported.stderr.decode(errors='replace')}")


def recipe_digest() -> str:
    return hashlib.sha256(HOST_DOCKERFILE.encode()).hexdigest()[:16]


def build_host_image(*, tag: str = HOST_IMAGE) -> None:
    """Build the systemd + sshd image on top of the base image (about 20 s)."""
    with tempfile.TemporaryDirectory(prefix="orchestrify-lab-ctx-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(HOST_DOCKERFILE)
        _run(
            ["docker", "build", "-q", "--label", f"{RECIPE_LABEL}={recipe_digest()}",
             "-t", tag, ctx],
            timeout=900,
        )  # fmt: skip


def ensure_images() -> str:
    """Build whichever lab image is missing or stale; return the host image's tag."""
    if image_label(HOST_IMAGE, RECIPE_LABEL) == recipe_digest():
        return HOST_IMAGE
    if image_label(BASE_IMAGE, "none") is None:
        build_base_image()
    build_host_image()
    return HOST_IMAGE


def generate_ssh_key(directory: Path) -> SSHKey:
    """A fresh passphrase-less ed25519 key pair in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / "id_ed25519"
    if not private.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrify-lab",
              "-f", str(private)])  # fmt: skip
    return SSHKey(private=private, public=private.with_suffix(".pub"))


class Lab:
    """A set of lab hosts started together and removed together."""

    def __init__(self, *, key: SSHKey, prefix: str = "orchestrify-lab") -> None:
        self.key = key
        self.session = uuid.uuid4().hex[:8]
        self.prefix = f"{prefix}-{self.session}"
        self.hosts: list[LabHost] = []

    def start(
        self, count: int, *, image: str = HOST_IMAGE, ssh_timeout: float = 60
    ) -> list[LabHost]:
        """Start ``count`` hosts, install the public key, and wait until sshd answers."""
        started: list[LabHost] = []
        for index in range(len(self.hosts), len(self.hosts) + count):
            name = f"{self.prefix}-{index}"
            docker("run", "-d", "--name", name, "--hostname", f"lab{index}",
                   "--label", f"{TEST_LABEL}=1", "--label", f"{SESSION_LABEL}={self.session}",
                   *LAB_RUN_FLAGS, image)  # fmt: skip
            address = docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name)
            host = LabHost(name=name, address=address)
            self.hosts.append(host)
            started.append(host)
            docker("exec", "-i", name, "sh", "-c",
                   "umask 077 && cat > /root/.ssh/authorized_keys",
                   input_text=self.key.public.read_text())  # fmt: skip
        for host in started:
            self.wait_for_ssh(host, timeout=ssh_timeout)
        return started

    def ssh_args(self, host: LabHost) -> list[str]:
        return [
            "ssh", "-i", str(self.key.private), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3", f"root@{host.address}",
        ]  # fmt: skip

    def wait_for_ssh(self, host: LabHost, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = _run([*self.ssh_args(host), "systemctl is-system-running --wait || true"],
                        check=False, timeout=30)  # fmt: skip
            if proc.returncode == 0:
                state = proc.stdout.strip()
                if state in {"running", "degraded"}:
                    return
                last = f"systemd is {state!r}"
            else:
                last = proc.stderr.strip()
            time.sleep(0.5)
        raise LabError(f"lab host {host.name} ({host.address}) not reachable over ssh: {last}")

    def write_inventory(self, path: Path, *, groups: Mapping[str, Sequence[LabHost]]) -> Path:
        """An Ansible YAML inventory with each host in the given groups.

        Host key checking is switched off here, per host and only for lab hosts: their keys
        are new every run. ansible.cfg leaves it on for real fleets.
        """
        hostvars = {
            host.name: {
                "ansible_host": host.address,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.key.private),
                "ansible_ssh_common_args": (
                    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                ),
                "ansible_python_interpreter": "/usr/bin/python3",
            }
            for host in self.hosts
        }
        children = {
            group: {"hosts": {host.name: hostvars[host.name] for host in members}}
            for group, members in groups.items()
        }
        path.write_text(yaml.safe_dump({"all": {"children": children}}, sort_keys=False))
        return path

    def exec(self, host: LabHost, *command: str, check: bool = True) -> str:
        """Run a command inside the lab host (through docker, not ssh)."""
        return docker("exec", host.name, *command, check=check)

    def teardown(self) -> None:
        """Remove every container of this lab, with its anonymous volumes."""
        names = docker("ps", "-aq", "--filter", f"label={SESSION_LABEL}={self.session}")
        if names:
            docker("rm", "-f", "-v", *names.split())
        self.hosts.clear()
