"""Apply a rendered Nginx config safely: stage, compare, test, swap, reload, verify, roll back.

docker-gen writes and reloads blindly (its issue #67); here a config reaches the running
Nginx only after ``nginx -t`` accepted the exact bytes, and a reload that does not take
effect puts the last good files back.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrify.edge.nginx import NginxControl
from orchestrify.errors import NginxFailure

log = logging.getLogger(__name__)

__all__ = ["ApplyResult", "ConfigApplier"]

MAIN_FILE = "nginx.conf"


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of one apply, as a value (the edge loop never dies of one)."""

    changed: bool  # the live files changed (and Nginx serves them)
    ok: bool
    error: str | None = None
    stage: str | None = None  # where it failed: test, reload, verify
    rolled_back: bool = False


class ConfigApplier:
    """Owns the files in ``conf_dir``; remembers the last config Nginx served."""

    def __init__(
        self, *, conf_dir: Path, nginx: NginxControl, verify_timeout_s: float = 5.0
    ) -> None:
        self.conf_dir = conf_dir
        self.nginx = nginx
        self.verify_timeout_s = verify_timeout_s

    def _current(self, names: Mapping[str, str]) -> dict[str, bytes | None]:
        current: dict[str, bytes | None] = {}
        for name in names:
            try:
                current[name] = (self.conf_dir / name).read_bytes()
            except FileNotFoundError:
                current[name] = None
        return current

    async def apply(self, files: Mapping[str, str], *, config_id: str) -> ApplyResult:
        """Make Nginx serve ``files`` (name -> text; the main file is ``nginx.conf``)."""
        if MAIN_FILE not in files:
            raise ValueError(f"{MAIN_FILE} missing from the rendered files")
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        wanted = {name: text.encode() for name, text in files.items()}
        current = self._current(files)
        if current == wanted:
            if self.nginx.running():
                return ApplyResult(changed=False, ok=True)
            return await self._start(config_id)

        # Stage every file in a private folder inside conf_dir (same filesystem, so the
        # swap below is an atomic rename); relative includes resolve next to the main file.
        stage = Path(tempfile.mkdtemp(prefix=".candidate-", dir=self.conf_dir))
        try:
            for name, data in wanted.items():
                (stage / name).write_bytes(data)
            try:
                await self.nginx.test(stage / MAIN_FILE)
            except NginxFailure as exc:
                log.warning("nginx refused the new config", extra={"error": str(exc)})
                return ApplyResult(changed=False, ok=False, error=str(exc), stage="test")
            # Included files first, the main file last.
            for name in sorted(wanted, key=lambda n: n == MAIN_FILE):
                os.replace(stage / name, self.conf_dir / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

        if not self.nginx.running():
            return await self._start(config_id)
        try:
            await self.nginx.reload()
        except NginxFailure as exc:
            return await self._roll_back(current, error=str(exc), stage="reload")
        if not await self.nginx.wait_serving(config_id, timeout_s=self.verify_timeout_s):
            why = self.nginx.errors_since_reload() or "see its error log"
            return await self._roll_back(
                current,
                error=f"nginx did not serve config {config_id} within {self.verify_timeout_s:g}s "
                f"after the reload: {why}",
                stage="verify",
            )
        return ApplyResult(changed=True, ok=True)

    async def _start(self, config_id: str) -> ApplyResult:
        try:
            await self.nginx.start()
        except NginxFailure as exc:
            return ApplyResult(changed=True, ok=False, error=str(exc), stage="start")
        if not await self.nginx.wait_serving(config_id, timeout_s=self.verify_timeout_s):
            return ApplyResult(
                changed=True, ok=False, error="nginx started but does not answer", stage="verify"
            )
        return ApplyResult(changed=True, ok=True)

    async def _roll_back(
        self, previous: Mapping[str, bytes | None], *, error: str, stage: str
    ) -> ApplyResult:
        """Put the files Nginx last served back and reload them."""
        log.error("nginx reload failed; restoring the last good config", extra={"error": error})
        for name, data in sorted(previous.items(), key=lambda kv: kv[0] == MAIN_FILE):
            target = self.conf_dir / name
            if data is None:
                target.unlink(missing_ok=True)
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.conf_dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        try:
            await self.nginx.reload()
        except NginxFailure as exc:
            error = f"{error}; reloading the previous config failed too: {exc}"
        return ApplyResult(changed=False, ok=False, error=error, stage=stage, rolled_back=True)
