"""A fast backend for edge benchmarks: the host's own Nginx in a container of its own.

The demo image (busybox httpd + a shell CGI) forks per request and tops out at a few
hundred requests per second, so it would hide any cost of the hop in front of it. This
image holds the host's ``nginx`` binary and the shared libraries ``ldd`` names, plus a
tiny config that answers ``200 ok`` from memory: a backend as fast as the proxy under
test. It is built like the demo image, ``FROM scratch`` from an in-memory context, so
nothing is pulled from a registry.

Every image and container made here carries ``orchestrify.test=1`` and a per-run label,
and ``Backend.stop`` removes both.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import httpx

from bench.labels import RUN_LABEL, TEST_LABEL
from orchestrify.errors import DockerFailure

__all__ = ["BACKEND_PORT", "TEST_LABEL", "Backend", "start_backend"]

BACKEND_PORT = 8000

_NGINX_CONF = f"""\
worker_processes 1;
daemon off;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    keepalive_requests 100000;
    server {{
        listen {BACKEND_PORT};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

_DOCKERFILE = f"""\
FROM scratch
COPY rootfs/ /
EXPOSE {BACKEND_PORT}
ENTRYPOINT ["/usr/sbin/nginx", "-e", "stderr", "-p", "/srv/", "-c", "/srv/nginx.conf"]
"""


def _shared_libraries(binary: Path) -> list[Path]:
    """The files ``ldd`` says ``binary`` loads (the loader included)."""
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    found = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            found.append(Path(m.group(1)))
    return found


def _context(nginx: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        add("Dockerfile", _DOCKERFILE.encode())
        add_dir("rootfs/tmp", 0o1777)
        add_dir("rootfs/srv")
        add("rootfs/srv/nginx.conf", _NGINX_CONF.encode())
        # A master running as root looks its workers' user up (nobody) in these files.
        add("rootfs/etc/passwd", b"root:x:0:0:root:/:/none\nnobody:x:65534:65534::/:/none\n")
        add("rootfs/etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add("rootfs/usr/sbin/nginx", nginx.read_bytes(), 0o755)
        for lib in _shared_libraries(nginx):
            add(f"rootfs{lib}", lib.resolve().read_bytes(), 0o755)
    buffer.seek(0)
    return buffer


@dataclass
class Backend:
    """One backend container answering at ``address`` (``127.0.0.1:PORT``)."""

    client: docker.DockerClient
    image: str
    run_id: str
    address: str = ""
    containers: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Remove every container and the image this run made."""
        for c in self.client.containers.list(
            all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"}
        ):
            with contextlib.suppress(docker.errors.DockerException):
                c.remove(force=True)
        with contextlib.suppress(docker.errors.DockerException):
            self.client.images.remove(self.image, force=True)
        self.client.close()


def start_backend(*, timeout_s: float = 60.0) -> Backend:
    """Build the backend image, run one container on a loopback port, wait until it answers."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).is_file():
        raise DockerFailure("nginx not found; apt-get install nginx")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerFailure(f"cannot reach the Docker engine: {exc}") from exc
    run_id = uuid.uuid4().hex[:12]
    tag = f"orchestrify-test/edge-backend:{run_id}"
    backend = Backend(client=client, image=tag, run_id=run_id)
    try:
        client.images.build(
            fileobj=_context(Path(nginx).resolve()),
            custom_context=True,
            tag=tag,
            pull=False,
            rm=True,
            forcerm=True,
            labels={TEST_LABEL: "1", RUN_LABEL: run_id},
        )
        c = client.containers.run(
            tag,
            detach=True,
            name=f"orchestrify-edge-backend-{run_id}",
            ports={f"{BACKEND_PORT}/tcp": ("127.0.0.1", None)},
            labels={TEST_LABEL: "1", RUN_LABEL: run_id},
        )
        backend.containers.append(c.id)
        deadline = time.monotonic() + timeout_s
        while True:
            c.reload()
            bound = (c.ports.get(f"{BACKEND_PORT}/tcp") or [{}])[0].get("HostPort")
            if bound:
                backend.address = f"127.0.0.1:{bound}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://{backend.address}/", timeout=1).status_code == 200:
                        return backend
            if c.status == "exited" or time.monotonic() > deadline:
                logs = c.logs(tail=20).decode(errors="replace")
                raise DockerFailure(f"the backend container did not answer: {logs}")
            time.sleep(0.1)
    except BaseException:
        backend.stop()
        raise
