"""The demo application image: a tiny HTTP service whose health and latency can be steered.

It is built without any registry: ``FROM scratch`` plus the host's static busybox and the
shell scripts in ``app/``. Tests and demos rely on its contract (see ``app/serve.sh``):

- port 8000; any method on any path other than the ones below answers 200
  ``<greeting> from <replica> (<METHOD>)`` and ``path: <path>``, where the greeting is
  ``$GREETING`` (default ``hello``: ``service update demo --env GREETING=hi`` shows a
  rolling update taking effect) and the replica ``$ORCHESTRIFY_REPLICA`` if set, else
  the container's hostname;
- every request is one line on the container's stdout, ``METHOD TARGET STATUS``;
- ``GET /health`` answers 200 ``ok``, or 500 after ``GET /admin/health?ok=0`` until
  ``GET /admin/health?ok=1``;
- ``GET /admin/latency?ms=N`` (0..60000) delays every later application request by N ms;
- ``GET /admin/state`` shows both switches;
- ``GET /admin/log?lines=N`` (1..1000000) prints N numbered lines on stdout,
  ``<replica> line <i> of <N>``, for ``service logs`` and ``bench/logs.py``;
- on SIGTERM (``docker stop``) it logs one line saying it received SIGTERM, stops
  accepting connections, lets the requests in flight finish, then exits 0.
"""

from __future__ import annotations

import io
import struct
import tarfile
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from orchestrify.errors import DockerFailure

__all__ = [
    "BUSYBOX_CANDIDATES",
    "DEFAULT_TAG",
    "DEMO_IMAGE_LABEL",
    "DEMO_PORT",
    "build_demo_image",
    "find_static_busybox",
]

DEFAULT_TAG = "orchestrify/demo:latest"
DEMO_PORT = 8000
DEMO_IMAGE_LABEL = "orchestrify.demo"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))

# Applets the scripts call by name (the shell finds them on PATH), plus a few that make
# `docker exec CONTAINER sh` useful when debugging.
_APPLETS = (
    "sh",
    "nc",
    "sleep",
    "head",
    "rm",
    "mv",
    "hostname",
    "cat",
    "ls",
    "ps",
    "wget",
    "awk",
)

_DOCKERFILE = f"""\
FROM scratch
COPY rootfs/ /
ENV PATH=/bin LC_ALL=C
EXPOSE {DEMO_PORT}
LABEL {DEMO_IMAGE_LABEL}="1"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "/app/entrypoint.sh"]
"""

_PT_INTERP = 3  # ELF program header type naming a dynamic loader


def find_static_busybox() -> Path:
    """Return the host's statically linked busybox, the only binary a scratch image can run."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file():
            if _is_static_elf(candidate):
                return candidate
            raise DockerFailure(
                f"{candidate} is dynamically linked and cannot run in an empty image; "
                "apt-get install busybox-static"
            )
    raise DockerFailure(
        "no busybox found at /bin/busybox or /usr/bin/busybox; apt-get install busybox-static"
    )


def build_demo_image(*, tag: str = DEFAULT_TAG, docker_url: str | None = None) -> str:
    """Build the demo image on the Docker engine at ``docker_url`` and return its id.

    Nothing is pulled: the build context (busybox, scripts, Dockerfile) is made in memory.
    """
    context = _build_context(find_static_busybox())
    try:
        client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
    except docker.errors.DockerException as exc:
        raise DockerFailure(f"cannot reach the Docker engine: {exc}") from exc
    try:
        image, _log = client.images.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            pull=False,
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        raise DockerFailure(f"building {tag} failed: {exc.msg}") from exc
    except docker.errors.DockerException as exc:
        raise DockerFailure(f"building {tag} failed: {exc}") from exc
    finally:
        client.close()
    image_id = image.id
    if not image_id:
        raise DockerFailure(f"building {tag} returned no image id")
    return str(image_id)


def _build_context(busybox: Path) -> io.BytesIO:
    """The build context as an in-memory tar: Dockerfile plus the image's root file system."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_file(tar, "Dockerfile", _DOCKERFILE.encode(), mode=0o644)
        _add_dir(tar, "rootfs/bin", mode=0o755)
        _add_file(tar, "rootfs/bin/busybox", busybox.read_bytes(), mode=0o755)
        for applet in _APPLETS:
            link = tarfile.TarInfo(f"rootfs/bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        # /tmp holds the demo's runtime state; sticky and world-writable as usual.
        _add_dir(tar, "rootfs/tmp", mode=0o1777)
        _add_dir(tar, "rootfs/app", mode=0o755)
        scripts = resources.files(__name__) / "app"
        for name in ("entrypoint.sh", "serve.sh"):
            _add_file(tar, f"rootfs/app/{name}", (scripts / name).read_bytes(), mode=0o755)
    buffer.seek(0)
    return buffer


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, *, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, *, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _is_static_elf(path: Path) -> bool:
    """True when ``path`` is an ELF executable without a dynamic loader (no PT_INTERP)."""
    with path.open("rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            return False
        is_64 = ident[4] == 2
        order = "<" if ident[5] == 1 else ">"
        if is_64:
            header = f.read(48)
            phoff, phentsize, phnum = (
                struct.unpack_from(order + "Q", header, 16)[0],
                *struct.unpack_from(order + "HH", header, 38),
            )
        else:
            header = f.read(36)
            phoff, phentsize, phnum = (
                struct.unpack_from(order + "I", header, 12)[0],
                *struct.unpack_from(order + "HH", header, 26),
            )
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            (p_type,) = struct.unpack(order + "I", f.read(4))
            if p_type == _PT_INTERP:
                return False
    return True
