"""Render Nginx's configuration from the Jinja templates in ``templates/nginx/``.

The canonical templates live in the repository's top-level ``templates/nginx/`` (Ansible
renders from there too). ``orchestrify/_templates`` is a symlink to ``templates/``
listed in the package data, so the wheel carries real copies: the same lookup works
from a checkout and from an installed wheel (the approach of ``config_render``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2

from orchestrify.edge.view import EdgeView
from orchestrify.errors import InvalidSpec

__all__ = [
    "FILES",
    "NginxRenderSettings",
    "RenderedConfig",
    "nginx_templates_dir",
    "render_nginx",
    "replica_of_address",
]

# Rendered file -> template. nginx.conf includes upstreams.conf by that relative name.
FILES: dict[str, str] = {"upstreams.conf": "upstreams.conf.j2", "nginx.conf": "nginx.conf.j2"}


def nginx_templates_dir() -> Path:
    """The shipped ``nginx`` template folder (wheel or checkout)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_templates" / "nginx", package.parent / "templates" / "nginx"):
        if (candidate / "nginx.conf.j2").is_file():
            return candidate
    raise FileNotFoundError(
        f"orchestrify's nginx templates are missing (looked in {package / '_templates'} "
        f"and {package.parent / 'templates'}); pass --templates-dir"
    )


@dataclass(frozen=True)
class NginxRenderSettings:
    """Template variables that come from the edge's settings, not from the controller."""

    listen: str  # "8080" or "127.0.0.1:8080"
    domain: str  # services answer on NAME.<domain>
    pid_file: str
    error_log: str
    temp_dir: str
    access_log: str  # the file the edge reads its telemetry from, or "off"
    # --access-log: the file Nginx writes one JSON line per request to (checked by
    # orchestrify.edge.access_log), or None for none.
    json_access_log: str | None = None
    # "USER GROUP" of Nginx's workers when its master runs as root; None: no `user`
    # directive (a master that is not root runs its workers as itself).
    worker_user: str | None = None
    worker_processes: str = "auto"
    worker_connections: int = 4096
    connect_timeout: str = "500ms"  # a dead replica is skipped quickly (loopback/LAN)
    read_timeout: str = "60s"
    next_upstream_tries: int = 3
    next_upstream_timeout: str = "10s"
    fail_timeout: str = "5s"  # how long a failed replica is skipped before a new try
    keepalive: int = 32
    # Each worker writes its log lines in one write per this much, or per this long: a
    # write per request is what made per-request telemetry cost (docs/edge.md).
    access_log_buffer: str = "64k"
    access_log_flush: str = "1s"


@dataclass(frozen=True)
class RenderedConfig:
    files: dict[str, str]  # file name -> text, in the order they must be swapped in
    config_id: str  # served by /__orchestrify/health once this config is live


def render_nginx(
    view: EdgeView, settings: NginxRenderSettings, *, templates_dir: Path | None = None
) -> RenderedConfig:
    """Render both files. Raises ``InvalidSpec`` when a template is missing or broken."""
    folder = templates_dir or nginx_templates_dir()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not ""
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # nginx config, not HTML; the view model is validated instead
        auto_reload=True,
    )
    variables: dict[str, Any] = asdict(settings)
    config_id = view.fingerprint(variables)
    context = {
        **variables,
        "services": view.services,
        "replica_of_address": replica_of_address(view),
        "config_id": config_id,
    }
    files = {}
    for name, template in FILES.items():
        try:
            files[name] = env.get_template(template).render(context)
        except jinja2.TemplateError as exc:
            where = f"{folder / template}"
            line = getattr(exc, "lineno", None)
            raise InvalidSpec(
                f"template {where}{f':{line}' if line else ''} failed to render: {exc}",
                field="templates",
            ) from exc
    if settings.json_access_log and (
        f"access_log {settings.json_access_log} orchestrify_json" not in files["nginx.conf"]
    ):
        # A template from --templates-dir older than --access-log would drop it silently.
        raise InvalidSpec(
            f"template {folder / FILES['nginx.conf']} does not write the access log "
            f"{settings.json_access_log} (no `access_log ... orchestrify_json`); start from "
            "the shipped nginx.conf.j2",
            field="templates",
        )
    return RenderedConfig(files=files, config_id=config_id)


def replica_of_address(view: EdgeView) -> list[tuple[str, str]]:
    """(address, replica id) of every upstream server, for the access log's ``replica``.

    One entry per address, compared as Nginx's ``map`` compares (case-insensitively): a
    key twice would make Nginx refuse the whole config. The view validated both parts.
    """
    found: dict[str, tuple[str, str]] = {}
    for svc in view.services:
        for server in svc.servers:
            found.setdefault(server.address.lower(), (server.address, server.replica))
    return sorted(found.values())
