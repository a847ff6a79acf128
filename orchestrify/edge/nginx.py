"""The one adapter around the ``nginx`` binary (and its health location).

Every nginx subprocess call goes through ``NginxProcess``; failures come out as
``NginxFailure`` carrying Nginx's own error text, never as a foreign exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Protocol

import httpx

from orchestrify.errors import NginxFailure

log = logging.getLogger(__name__)

__all__ = ["NginxControl", "NginxProcess", "accepting_workers", "nginx_available"]


def nginx_available(binary: str = "nginx") -> bool:
    """True when ``binary`` can be run (``orchestrify up`` starts the edge only then)."""
    return shutil.which(binary) is not None


class NginxControl(Protocol):
    """What the config applier needs of Nginx (a fake implements it in unit tests)."""

    async def test(self, conf: Path) -> None: ...
    def running(self) -> bool: ...
    async def start(self) -> None: ...
    async def reload(self) -> None: ...
    async def wait_serving(self, config_id: str, *, timeout_s: float) -> bool: ...
    def errors_since_reload(self) -> str: ...


_PROC = Path("/proc")
_WORKER_TITLE = b"nginx: worker process"


def _cmdline(pid: int) -> bytes | None:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").strip()
    except OSError:
        return None


def _still_accepting(pid: int) -> bool:
    """True while worker ``pid`` runs and has not begun its graceful shutdown."""
    return _cmdline(pid) == _WORKER_TITLE


def accepting_workers(master: int) -> set[int]:
    """The worker processes of Nginx master ``master`` that take new connections.

    Read from ``/proc`` (empty where there is none): a worker's title is "nginx: worker
    process" until it starts shutting down ("... is shutting down").
    """
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == master and _still_accepting(int(entry.name)):
                found.add(int(entry.name))
    return found


class NginxProcess:
    """An Nginx whose prefix is ``prefix`` and whose main config is ``prefix/nginx.conf``.

    If an Nginx is already running from that pid file (for example left by an edge that
    restarted), it is adopted and reloaded; otherwise ``start`` runs one as a child in
    the foreground (``daemon off``) and ``stop`` ends it.
    """

    def __init__(
        self,
        *,
        binary: str,
        prefix: Path,
        pid_file: Path,
        health_url: str,
        error_log: Path | None = None,
        command_timeout_s: float = 15.0,
    ) -> None:
        self.binary = binary
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.pid_file = pid_file
        self.health_url = health_url
        self.error_log = error_log
        self._error_log_mark = 0  # its size when the last reload was asked for
        self.command_timeout_s = command_timeout_s
        self._child: asyncio.subprocess.Process | None = None
        # Workers of the config before the last reload; see ``wait_serving``.
        self._old_workers: set[int] = set()

    async def _run(self, *args: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-p",
                f"{self.prefix}/",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NginxFailure(f"cannot run {self.binary}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout_s)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise NginxFailure(f"`nginx {' '.join(args)}` timed out") from exc
        text = (err or b"").decode(errors="replace") + (out or b"").decode(errors="replace")
        if proc.returncode != 0:
            raise NginxFailure(_nginx_error(text) or f"nginx exited with {proc.returncode}")
        return text

    async def test(self, conf: Path) -> None:
        """``nginx -t`` the full configuration whose main file is ``conf``."""
        await self._run("-t", "-q", "-c", str(conf))

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, someone else's
        return pid

    def running(self) -> bool:
        if self._child is not None and self._child.returncode is not None:
            self._child = None
        return self.pid() is not None

    async def start(self) -> None:
        """Run Nginx in the foreground as our child and wait until it has written its pid."""
        try:
            self._child = await asyncio.create_subprocess_exec(
                self.binary,
                "-p",
                f"{self.prefix}/",
                "-c",
                str(self.conf),
                "-g",
                "daemon off;",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NginxFailure(f"cannot run {self.binary}: {exc}") from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout_s
        while loop.time() < deadline:
            if self._child.returncode is not None:
                err = b""
                if self._child.stderr is not None:
                    err = await self._child.stderr.read()
                self._child = None
                raise NginxFailure(_nginx_error(err.decode(errors="replace")) or "nginx exited")
            if self.pid() is not None:
                log.info("nginx started", extra={"pid": self.pid(), "prefix": str(self.prefix)})
                return
            await asyncio.sleep(0.05)
        raise NginxFailure("nginx did not write its pid file in time")

    async def reload(self) -> None:
        master = self.pid()
        self._old_workers = accepting_workers(master) if master is not None else set()
        self._error_log_mark = self._error_log_size()
        await self._run("-s", "reload", "-c", str(self.conf))

    def _error_log_size(self) -> int:
        try:
            return self.error_log.stat().st_size if self.error_log is not None else 0
        except OSError:
            return 0

    def errors_since_reload(self) -> str:
        """What the master wrote to its error log at [emerg], [alert] or [crit] since the
        last reload: why a reload that `nginx -t` accepted did not take (a port in use,
        a certificate it cannot read...). Empty when there is nothing, or no log."""
        if self.error_log is None:
            return ""
        try:
            with self.error_log.open("rb") as fh:
                fh.seek(self._error_log_mark)
                text = fh.read(64 * 1024).decode(errors="replace")
        except OSError:
            return ""
        found = []
        for line in text.splitlines():
            for level in ("[emerg]", "[alert]", "[crit]"):
                if level in line:
                    # "2026/11/22 00:55:01 [emerg] 123#123: bind() to ... failed (98: ...)"
                    found.append(line.split(level, 1)[1].split(": ", 1)[-1].strip())
        return "; ".join(dict.fromkeys(found))

    async def wait_serving(self, config_id: str, *, timeout_s: float) -> bool:
        """Wait until the config ``config_id`` alone takes new connections.

        First the health location must name ``config_id``. After a reload the workers of
        the old config keep accepting for a moment, until each has handled the master's
        QUIT (a new connection may still meet the old config then), so this also waits
        until every one of them has exited or says it is shutting down, which it does
        right before closing its listening sockets. If they are slower than ``timeout_s``
        that is logged; the new config is live either way.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                try:
                    resp = await http.get(self.health_url)
                    if resp.status_code == 200 and resp.text.split() == ["ok", config_id]:
                        break
                except httpx.HTTPError:
                    pass
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.05)
        while self._old_workers:
            self._old_workers = {pid for pid in self._old_workers if _still_accepting(pid)}
            if self._old_workers and loop.time() >= deadline:
                log.warning(
                    "old nginx workers still accept connections after the reload",
                    extra={"pids": sorted(self._old_workers), "config": config_id},
                )
                self._old_workers = set()
            elif self._old_workers:
                await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        """Stop the Nginx we started (gracefully, then by force); leave an adopted one."""
        child, self._child = self._child, None
        if child is None or child.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGQUIT)  # graceful: in-flight requests finish
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


def _nginx_error(text: str) -> str:
    """The lines of nginx's output that say what is wrong."""
    lines = [
        line.strip()
        for line in text.splitlines()
        if "[emerg]" in line or "[alert]" in line or "[crit]" in line or "[error]" in line
    ]
    return "; ".join(lines) or text.strip()
