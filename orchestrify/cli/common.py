"""What every CLI command shares: the API client, tables/JSON output, error exits."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from orchestrify.client import DEFAULT_URL, ControllerClient
from orchestrify.errors import InvalidSpec, OrchestrifyError
from orchestrify.tls import check_ca_file

if TYPE_CHECKING:
    from orchestrify.controller.settings import ControllerSettings

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

# Piped output keeps whole lines (no folding at 80 columns) so it can be grepped.
console = Console(highlight=False, soft_wrap=False)
if not console.is_terminal:
    console = Console(highlight=False, soft_wrap=False, width=int(os.environ.get("COLUMNS", 200)))
err_console = Console(stderr=True, highlight=False)

JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
TlsCertOpt = typer.Option(
    None,
    "--tls-cert",
    envvar="ORCHESTRIFY_TLS_CERT",
    help="PEM certificate to serve HTTPS with (HTTPS only; needs --tls-key).",
)
TlsKeyOpt = typer.Option(
    None,
    "--tls-key",
    envvar="ORCHESTRIFY_TLS_KEY",
    help="Unencrypted PEM private key of --tls-cert.",
)
CaOpt = typer.Option(
    None,
    "--ca",
    envvar="ORCHESTRIFY_CA",
    help="PEM file of the CA that signed the controller's certificate (https URLs); "
    "default: the system's trust store.",
)

PrometheusUrlOpt = typer.Option(
    None,
    "--prometheus-url",
    envvar="ORCHESTRIFY_PROMETHEUS_URL",
    show_default=False,
    help="Base URL of the Prometheus that scrapes this fleet, e.g. http://127.0.0.1:9090: "
    "the status page (/ui/services) then charts each service's p95 latency and request "
    "rate over the last hour against its targets. Unset: no charts.",
)

DatabaseUrlOpt = typer.Option(
    None,
    "--database-url",
    envvar="ORCHESTRIFY_DATABASE_URL",
    show_default=False,
    help="The store: sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB "
    "(default: SQLite in --data-dir). It holds a password: prefer the environment "
    "variable, which `ps` does not show. The schema is migrated at start.",
)


def open_store_or_exit(settings: ControllerSettings) -> None:
    """Open (and so migrate) the store ``settings`` name, then close it: a wrong URL or an
    unreachable database is a one-line error and exit 2 before anything listens, never a
    traceback from inside the server. The password never appears in the message."""
    from orchestrify.store import Store, redacted

    url = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        Store.open(url, data_dir=settings.data_dir, node_timeout_s=settings.node_timeout_s).close()
    except OrchestrifyError as exc:
        where = redacted(url) if url else f"SQLite in {settings.data_dir}"
        message = " ".join(str(exc).split())  # one line (libpq's messages have several)
        password = _password(url)
        if password:
            message = message.replace(password, "***")
        raise fail(f"cannot open the store at {where}: {message}", code=2) from None


def _password(url: str | None) -> str | None:
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    if not url:
        return None
    try:
        return make_url(url).password
    except ArgumentError:
        return None


@dataclass
class CliConfig:
    controller: str = DEFAULT_URL
    token: str | None = None
    ca: Path | None = None

    def client(self) -> ControllerClient:
        return ControllerClient(self.controller, self.token, ca=self.ca)


def config(ctx: typer.Context) -> CliConfig:
    obj = ctx.find_root().obj
    if isinstance(obj, CliConfig):
        return obj
    ca = os.environ.get("ORCHESTRIFY_CA")
    return CliConfig(
        os.environ.get("ORCHESTRIFY_URL", DEFAULT_URL),
        os.environ.get("ORCHESTRIFY_TOKEN"),
        Path(ca) if ca else None,
    )


def checked_ca(ca: Path | None) -> Path | None:
    """``ca`` after checking it is a readable PEM file, or a one-line error and exit 2."""
    if ca is not None:
        try:
            check_ca_file(ca)
        except ValueError as exc:
            raise fail(f"{exc} (--ca or env ORCHESTRIFY_CA)", code=2) from None
    return ca


def fail(message: str, *, code: int = 1) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def settings_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line naming every bad setting, and its environment variable if it has one."""
    prefix = model.model_config.get("env_prefix")
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a check across fields names its options itself
            parts.append(msg)
            continue
        name = ".".join(str(p) for p in err["loc"])
        where = f" (or env {prefix}{name.upper()})" if prefix and "." not in name else ""
        parts.append(f"{name}{where}: {msg}")
    return "invalid setting " + "; ".join(parts)


def build_settings(model: type[M], **values: Any) -> M:
    """``model(**values)``, or a one-line error and exit 2 naming the bad setting (an
    option, or an ``ORCHESTRIFY_*`` variable that the option does not cover)."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise fail(settings_error(exc, model), code=2) from None


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn orchestrify errors into one line on stderr and a non-zero exit (2 for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except InvalidSpec as exc:
            raise fail(str(exc), code=2) from None
        except OrchestrifyError as exc:
            raise fail(str(exc)) from None

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> None:
    rows = list(rows)
    if not rows:
        console.print(empty, markup=False)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("-" if v is None or v == "" else str(v) for v in row))
    console.print(table)


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in pairs:
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


def ago(value: str | None) -> str:
    """'12s ago' style age of an ISO timestamp from the API."""
    if not value:
        return "-"
    then = datetime.fromisoformat(value)
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    secs = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}TiB"
