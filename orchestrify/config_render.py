"""Render the shipped Prometheus, Alertmanager and Grafana configuration.

The templates live in the repository's top-level ``templates/`` folder, the one place
Ansible renders them from as well. ``orchestrify/_templates`` is a symlink to that
folder, listed in the package data, so ``build_py`` copies the real files into the
wheel: one lookup (``orchestrify/_templates``) works from a checkout and from an
installed wheel, and there is no second copy to keep in sync.

Rendering is all or nothing: every file is rendered and parsed before any is written,
and each is then swapped in atomically, so a bad render never reaches a running
Prometheus or Alertmanager.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import yaml

from orchestrify.errors import InvalidSpec

__all__ = [
    "OUTPUTS",
    "PROFILES",
    "PROFILE_DEFAULTS",
    "TEMPLATE_DEFAULTS",
    "render_config",
    "templates_dir",
]


@dataclass(frozen=True)
class ConfigOutput:
    """One rendered file: which template, which file name, whether it holds the token."""

    template: str
    filename: str
    holds_token: bool
    kind: str  # "yaml" or "json": how the render is checked before it is written


OUTPUTS: tuple[ConfigOutput, ...] = (
    ConfigOutput("prometheus/prometheus.yml.j2", "prometheus.yml", True, "yaml"),
    ConfigOutput("prometheus/rules.yml.j2", "rules.yml", False, "yaml"),
    ConfigOutput("alertmanager/alertmanager.yml.j2", "alertmanager.yml", True, "yaml"),
    ConfigOutput("grafana/orchestrify-dashboard.json.j2", "grafana-dashboard.json", False, "json"),
)

# The defaults the templates themselves carry (`| default(...)`), repeated here only so
# that overrides can be checked by name and the CLI/docs can show them. The templates
# stay the source of truth: Ansible renders them without this module.
TEMPLATE_DEFAULTS: Mapping[str, Any] = {
    "scrape_interval": "5s",
    "evaluation_interval": "5s",
    "sd_refresh_interval": "15s",
    "alertmanager_targets": ["127.0.0.1:9093"],
    "rule_files": ["rules.yml"],
    "group_wait": "5s",
    "group_interval": "10s",
    "repeat_interval": "1m",
    "for_latency": "30s",
    "for_rate": "30s",
    "for_health": "10s",
    "for_node": "30s",
    "for_leader": "1m",
    "latency_range": "1m",
    "rate_range": "2m",
    "scale_in_ratio": 0.8,
    "dashboard_title": "orchestrify",
    "dashboard_refresh": "10s",
    # node_exporter: its scrape job and the node alerts (docs/monitoring.md, Node metrics)
    "node_scrape_interval": "15s",
    "for_disk": "5m",
    "for_memory": "5m",
    "node_pressure_range": "5m",
    "node_disk_free_ratio": 0.1,
    "node_memory_free_ratio": 0.1,
    "node_memory_stall_ratio": 0.1,
    # TLS (docs/security.md, "TLS"): the CA file Prometheus and Alertmanager verify the controller's
    # (and the edges') certificates with ("": none, the system's), and the edges' scheme.
    "ca_file": "",
    "edge_scheme": "http",
    # Alertmanager's receiver max_alerts: the controller's max_alerts_per_batch or less.
    "max_alerts": 1000,
}

# The alerting profiles (the templates' ``alerting_profile``): which defaults the timing
# variables take. ``standard`` is TEMPLATE_DEFAULTS; ``fast`` scrapes and evaluates every
# second, with windows and ``for`` of a few seconds and no group_wait, so a breach reaches
# the controller in seconds instead of about a minute (docs/monitoring.md, "Alerting
# profiles", has the measured trade-off). The templates hold the same values (Ansible
# renders them without this module); tests/unit/test_config_render.py keeps the two equal.
PROFILES = ("standard", "fast")
PROFILE_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "standard": TEMPLATE_DEFAULTS,
    "fast": {
        **TEMPLATE_DEFAULTS,
        "scrape_interval": "1s",
        "evaluation_interval": "1s",
        "sd_refresh_interval": "5s",
        "group_wait": "0s",
        "group_interval": "1s",
        "for_latency": "5s",
        "for_rate": "5s",
        # for_health and for_node stay: the agent replaces an unhealthy replica itself
        # within a few seconds (the alert is its backstop), and a node is rescheduled
        # only after 30 s so that an agent restart does not move its replicas.
        "latency_range": "3s",
        "rate_range": "10s",
    },
}

# Durations that must be positive (intervals, ranges); the `for_*` ones and group_wait
# (0s: notify a new group at once) may be 0s.
_POSITIVE_DURATIONS = frozenset(
    {
        "scrape_interval",
        "evaluation_interval",
        "sd_refresh_interval",
        "group_interval",
        "repeat_interval",
        "latency_range",
        "rate_range",
        "dashboard_refresh",
    }
)
_DURATIONS = _POSITIVE_DURATIONS | {
    "group_wait",
    "for_latency",
    "for_rate",
    "for_health",
    "for_node",
    "for_leader",
}
# The node_exporter job's and the node alerts' durations, and their thresholds: shares in (0, 1].
_NODE_POSITIVE_DURATIONS = frozenset({"node_scrape_interval", "node_pressure_range"})
_NODE_DURATIONS = _NODE_POSITIVE_DURATIONS | {"for_disk", "for_memory"}
_NODE_RATIOS = frozenset(
    {"node_disk_free_ratio", "node_memory_free_ratio", "node_memory_stall_ratio"}
)

# Prometheus' duration syntax (model.ParseDuration): units in decreasing order.
_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def templates_dir() -> Path:
    """The folder holding the Jinja templates (see the module docstring for why)."""
    shipped = Path(__file__).resolve().parent / "_templates"
    if shipped.is_dir():
        return shipped
    # A checkout where the symlink did not survive (git with core.symlinks=false).
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"orchestrify's templates are missing: looked in {shipped}, {checkout}")


def render_config(
    *,
    out_dir: Path,
    controller_url: str | Sequence[str],
    token: str,
    profile: str = "standard",
    **overrides: Any,
) -> list[Path]:
    """Render prometheus.yml, rules.yml, alertmanager.yml and grafana-dashboard.json.

    ``controller_url``: one URL, or several (``URL1,URL2`` or a list) of controllers of
    one store: Alertmanager gets a webhook for each, Prometheus scrapes each.

    ``profile`` is the alerting profile, ``standard`` or ``fast`` (``PROFILE_DEFAULTS``):
    the defaults of the timing variables. ``overrides`` are template variables (see
    ``TEMPLATE_DEFAULTS``) and win over the profile's; unknown names are refused so a
    typo does not silently keep a default. Files holding the token are written with mode
    0600, the others 0644. Returns the written paths, in ``OUTPUTS`` order. Raises
    ``InvalidSpec`` naming the field on bad input.
    """
    _check_controller_urls(controller_url)
    _check_token(token)
    if profile not in PROFILES:
        raise InvalidSpec(
            f"profile must be one of {', '.join(PROFILES)}, got {profile!r}", field="profile"
        )
    variables = {name: _check_override(name, value) for name, value in overrides.items()}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidSpec(f"{out_dir} exists and is not a directory", field="out_dir")

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML and JSON, not HTML; values are quoted with `tojson`
    )
    context = {
        "controller_url": controller_url,
        "token": token,
        "alerting_profile": profile,
        **variables,
    }
    rendered = [(output, _render_one(env, output, context)) for output in OUTPUTS]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for output, text in rendered:
        path = out_dir / output.filename
        _write_atomically(path, text.encode(), mode=0o600 if output.holds_token else 0o644)
        paths.append(path)
    return paths


def _render_one(env: jinja2.Environment, output: ConfigOutput, context: Mapping[str, Any]) -> str:
    try:
        text = env.get_template(output.template).render(context)
    except jinja2.UndefinedError as exc:
        raise InvalidSpec(f"{output.template}: {exc.message}") from exc
    # A render that does not even parse is a bug or a hostile value: refuse it here
    # rather than let Prometheus or Alertmanager refuse it at reload.
    try:
        if output.kind == "json":
            json.loads(text)
        else:
            yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidSpec(
            f"{output.filename} did not render to valid {output.kind}: {exc}"
        ) from exc
    return text


def _write_atomically(path: Path, data: bytes, *, mode: int) -> bool:
    """Swap ``path`` to ``data`` with a temp file + os.replace; True if the bytes changed.

    The temp file is created 0600 by mkstemp, so a token is never readable by others,
    not even for a moment.
    """
    try:
        unchanged = path.read_bytes() == data
    except FileNotFoundError:
        unchanged = False
    if unchanged:
        os.chmod(path, mode)
        return False
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return True


def _check_controller_urls(value: object) -> None:
    """One controller URL, or several (a list, or one string ``URL1,URL2``) that the
    templates render a webhook and a scrape target for each: all of one scheme and path
    prefix, since one Prometheus job scrapes them all with the first one's."""
    if isinstance(value, str) and "," in value:
        urls: list[object] = [u.strip() for u in value.split(",")]
    elif isinstance(value, list | tuple) and value:
        urls = list(value)
    else:
        urls = [value]
    for url in urls:
        _check_controller_url(url)
    parts = [urlsplit(u) for u in urls if isinstance(u, str)]
    shapes = {(p.scheme, p.path.rstrip("/")) for p in parts}
    if len(shapes) > 1:
        raise InvalidSpec(
            "controller_url: every controller must have the same scheme and path prefix "
            f"(one Prometheus job scrapes them all), got {', '.join(map(str, urls))}",
            field="controller_url",
        )


def _check_controller_url(url: object) -> None:
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        raise InvalidSpec(
            "controller_url must be an http(s) URL such as http://127.0.0.1:18080",
            field="controller_url",
        )
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidSpec(
            f"controller_url has a bad port: {url!r}", field="controller_url"
        ) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSpec(
            f"controller_url must be an http(s) URL such as http://127.0.0.1:18080, got {url!r}",
            field="controller_url",
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidSpec(
            "controller_url must not carry a query, fragment or credentials "
            "(the token goes in `token`)",
            field="controller_url",
        )


def _check_token(token: object) -> None:
    if not isinstance(token, str) or not token:
        raise InvalidSpec("token must not be empty", field="token")
    if any(c.isspace() or not c.isprintable() for c in token):
        # It travels in an Authorization header: no spaces, newlines or control chars.
        raise InvalidSpec("token must not contain spaces or control characters", field="token")


def _check_override(name: str, value: Any) -> Any:
    if name not in TEMPLATE_DEFAULTS:
        known = ", ".join(sorted(TEMPLATE_DEFAULTS))
        raise InvalidSpec(f"unknown template variable {name!r}; known: {known}", field=name)
    if name in _DURATIONS or name in _NODE_DURATIONS:
        if not isinstance(value, str) or not value or not _DURATION.match(value):
            raise InvalidSpec(
                f"{name} must be a Prometheus duration like 30s, 1m or 1h30m, got {value!r}",
                field=name,
            )
        positive = name in _POSITIVE_DURATIONS or name in _NODE_POSITIVE_DURATIONS
        if positive and not re.search(r"[1-9]", value):
            raise InvalidSpec(f"{name} must be longer than 0, got {value!r}", field=name)
        return value
    if name == "alertmanager_targets":
        targets = _string_list(name, value)
        for target in targets:
            match = _HOST_PORT.match(target)
            if not match or not 0 < int(match.group(2)) < 65536:
                raise InvalidSpec(
                    f"alertmanager_targets entries are host:port, got {target!r}", field=name
                )
        return targets
    if name == "rule_files":
        files = _string_list(name, value)
        if not files or not all(files):
            raise InvalidSpec("rule_files must list at least one non-empty path", field=name)
        return files
    if name == "scale_in_ratio":
        try:
            ratio = float(value)
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(
                f"scale_in_ratio must be a number, got {value!r}", field=name
            ) from exc
        if not 0 < ratio <= 1:
            raise InvalidSpec(f"scale_in_ratio must be in (0, 1], got {ratio}", field=name)
        return ratio
    if name in _NODE_RATIOS:
        return _ratio(name, value)
    if name == "ca_file":
        if not isinstance(value, str) or not all(c.isprintable() for c in value):
            raise InvalidSpec(f"ca_file must be a file path (or empty), got {value!r}", field=name)
        return value
    if name == "edge_scheme":
        if value not in ("http", "https"):
            raise InvalidSpec(f"edge_scheme must be http or https, got {value!r}", field=name)
        return value
    if name == "max_alerts":
        return _count(name, value)
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{name} must be a non-empty string", field=name)
    return value


def _count(name: str, value: Any) -> int:
    """A whole number from 1 to 1,000,000; a number, or its text (``--set`` gives text)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidSpec(f"{name} must be a whole number, got {value!r}", field=name)
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise InvalidSpec(
            f"{name} must be a whole number from 1 to 1,000,000, got {value!r}", field=name
        )
    return int(text)


def _ratio(name: str, value: Any) -> float:
    """A share in (0, 1]; a number, or its text (``--set`` gives text)."""
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        ratio = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(f"{name} must be a number in (0, 1], got {value!r}", field=name) from exc
    if not 0 < ratio <= 1:  # NaN too
        raise InvalidSpec(f"{name} must be in (0, 1], got {value!r}", field=name)
    return ratio


def _string_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidSpec(f"{name} must be a list of strings, got {value!r}", field=name)
    if not all(isinstance(item, str) for item in value):
        raise InvalidSpec(f"{name} must be a list of strings, got {value!r}", field=name)
    return list(value)
