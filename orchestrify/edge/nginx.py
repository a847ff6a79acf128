"""The one adapter around the ``nginx`` binary (and its health location).

Every nginx subprocess call goes through ``NginxProcess``; failures come out as
``NginxFailure`` carrying Nginx's own error text, never as a foreign exception.

Nginx is never the edge's child: it runs as a daemon in its own session (or under its
own systemd unit, through ``start_command``), so it keeps serving its last good config
when the edge stops, crashes or restarts; the next edge adopts it through its pid file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Sequence
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


def _alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (a daemon's master is not
    our child: when it exits, whoever adopted it reaps it, maybe not at once)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


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

    If an Nginx is already running from that pid file (left by an edge that stopped,
    crashed or restarted, or run by its own systemd unit), it is adopted and reloaded.
    Otherwise ``start`` runs one detached, as a daemon in a session of its own, so it
    outlives this process; with ``start_command`` (e.g. ``systemctl start
    orchestrify-nginx``) that command starts it instead. ``stop`` ends whichever Nginx
    runs from the pid file: only ``orchestrify up`` asks for that.
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
        start_command: Sequence[str] | None = None,
    ) -> None:
        self.binary = binary
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.pid_file = pid_file
        self.health_url = health_url
        self.error_log = error_log
        self._error_log_mark = 0  # its size when the last reload was asked for
        self.command_timeout_s = command_timeout_s
        self.start_command = tuple(start_command) if start_command else None
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
        """The running master named by the pid file; None when there is none (no file, a
        dead process, or a pid now used by a process that is not Nginx)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 0 or not _alive(pid):
            return None
        title = _cmdline(pid)
        if title is not None and b"nginx" not in title:
            return None  # a stale pid file whose pid was reused (after a reboot)
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    async def start(self) -> None:
        """Start Nginx detached and wait until its master has written its pid file.

        Run in daemon mode in a session of its own (or by ``start_command``): the
        starting process exits once the master runs, with Nginx's errors (a port in use,
        a bad directive) on its output and a non-zero status when it could not start.
        """
        command = self.start_command or (
            self.binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.conf),
        )
        self._error_log_mark = self._error_log_size()
        output = self.prefix / "nginx-start.log"
        try:
            # A file, not a pipe: the daemon inherits the starter's descriptors, and a
            # pipe held open by it would never reach end-of-file.
            with output.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise NginxFailure(f"cannot run {command[0]}: {exc}") from exc
        try:
            code = await asyncio.wait_for(proc.wait(), self.command_timeout_s)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise NginxFailure(f"`{' '.join(command)}` timed out") from exc
        if code != 0:
            text = output.read_text(errors="replace")
            why = _nginx_error(text) or f"{command[0]} exited with {code}"
            found = self.errors_since_reload()
            raise NginxFailure(f"{why}; {found}" if found and found not in why else why)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout_s
        while loop.time() < deadline:
            pid = self.pid()
            if pid is not None:
                log.info("nginx started", extra={"pid": pid, "prefix": str(self.prefix)})
                return
            await asyncio.sleep(0.05)
        why = self.errors_since_reload() or "see its error log"
        raise NginxFailure(f"nginx did not write its pid file in time: {why}")

    async def reload(self) -> None:
        master = self.pid()
        self._old_workers = accepting_workers(master) if master is not None else set()
        self._error_log_mark = self._error_log_size()
        await self._run("-s", "reload", "-c", str(self.conf))

    async def reopen_logs(self) -> None:
        """Have Nginx reopen its log files (``nginx -s reopen``): after the edge unlinked
        the access log, its workers flush their buffers into the old file and then write
        to a new one."""
        await self._run("-s", "reopen", "-c", str(self.conf))

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

    async def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the Nginx that runs from the pid file: gracefully (QUIT: in-flight requests
        finish), then fast (TERM) after ``timeout_s``. Only ``orchestrify up`` (a demo in
        one process) calls this; an edge leaves Nginx serving when it exits."""
        pid = self.pid()
        if pid is None:
            return
        loop = asyncio.get_running_loop()
        for sig, wait_s in ((signal.SIGQUIT, timeout_s), (signal.SIGTERM, timeout_s)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = loop.time() + wait_s
            while loop.time() < deadline:
                if not _alive(pid):
                    log.info("nginx stopped", extra={"pid": pid})
                    return
                await asyncio.sleep(0.05)
        log.warning("nginx did not stop", extra={"pid": pid})


def _nginx_error(text: str) -> str:
    """The lines of nginx's output that say what is wrong."""
    lines = [
        line.strip()
        for line in text.splitlines()
        if "[emerg]" in line or "[alert]" in line or "[crit]" in line or "[error]" in line
    ]
    return "; ".join(lines) or text.strip()
