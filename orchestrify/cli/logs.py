"""`orchestrify service logs` and `orchestrify replica logs`: the replicas' output from
every node, merged by time, as `docker service logs` shows it."""

from __future__ import annotations

import sys
import zlib
from typing import Any, TextIO

import typer

from orchestrify.cli.common import config

__all__ = ["LogPrinter", "logs_command"]

# Bright colours that read on dark and light terminals; a replica keeps its colour from
# one run to the next (a hash of its id, not the order it came in).
_COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93", "95", "92", "94", "91")

FollowOpt = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
SinceOpt = typer.Option(
    None,
    "--since",
    help="Only lines since: a duration ago (10m, 1h30m, 45s), an RFC 3339 time "
    "(2026-12-02T10:00:00Z) or Unix seconds.",
)
TailOpt = typer.Option(None, "--tail", "-n", min=0, help="Only the last N lines of each replica.")
TimestampsOpt = typer.Option(False, "--timestamps", "-t", help="Show each line's time.")
NoPrefixOpt = typer.Option(False, "--no-prefix", help="No SERVICE.REPLICA@NODE | prefix.")


class LogPrinter:
    """Prints NDJSON log objects as ``SERVICE.REPLICA@NODE | line``; notices go to
    stderr as ``orchestrify: …`` so a pipe gets only the lines."""

    def __init__(
        self,
        *,
        service: str | None,
        timestamps: bool,
        prefix: bool,
        colour: bool,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.service = service
        self.timestamps = timestamps
        self.prefix = prefix
        self.colour = colour
        self.out = out
        self.err = err
        self.replaced_seen: set[str] = set()
        self.lines = 0

    def show(self, obj: dict[str, Any]) -> None:
        if "notice" in obj:
            self.out.flush()
            self.err.write(f"orchestrify: {obj['notice']}\n")
            self.err.flush()
            return
        replica = str(obj.get("replica", "?"))
        text = str(obj.get("line", ""))
        if self.timestamps:
            text = f"{obj.get('ts', '')} {text}"
        if self.prefix:
            text = f"{self._label(obj, replica)} | {text}"
        if obj.get("replaced") and replica not in self.replaced_seen:
            self.replaced_seen.add(replica)
            self.out.flush()
            self.err.write(
                f"orchestrify: lines marked (replaced) come from a container replica "
                f"{replica} no longer runs, kept by Docker until it is removed\n"
            )
        self.out.write(text + "\n")
        self.lines += 1

    def _label(self, obj: dict[str, Any], replica: str) -> str:
        service = str(obj.get("service") or self.service or "")
        short = replica.removeprefix(f"{service}-") if service else replica
        node = obj.get("node", "?")
        label = f"{service}.{short}@{node}" if service else f"{short}@{node}"
        if obj.get("replaced"):
            label += " (replaced)"
        if self.colour:
            code = _COLOURS[zlib.crc32(replica.encode()) % len(_COLOURS)]
            label = f"\x1b[{code}m{label}\x1b[0m"
        return label


def logs_command(
    ctx: typer.Context,
    path: str,
    *,
    service: str | None,
    follow: bool,
    since: str | None,
    tail: int | None,
    timestamps: bool,
    no_prefix: bool,
) -> None:
    """Stream ``path``'s NDJSON and print it until it ends (or Ctrl-C with --follow)."""
    printer = LogPrinter(
        service=service,
        timestamps=timestamps,
        prefix=not no_prefix,
        colour=sys.stdout.isatty(),
        out=sys.stdout,
        err=sys.stderr,
    )
    params: dict[str, Any] = {"follow": str(follow).lower(), "since": since, "tail": tail}
    try:
        with config(ctx).client() as api:
            for obj in api.stream_ndjson(path, **params):
                printer.show(obj)
                if follow:
                    sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()
