"""The controller's history retention: prune the store at start, then every hour.

The store decides which rows are history (``orchestrify.store.retention``); this module
picks the cutoff from ``history_retention_days``, removes the private data dirs of the
jobs the store forgot, counts what went in ``orchestrify_history_pruned_total`` and
says so in one log line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from orchestrify.controller.metrics import ControllerMetrics
from orchestrify.jobs.runner import remove_private_data_dirs
from orchestrify.store import Store, utcnow
from orchestrify.store.retention import PruneResult, prune_history

__all__ = ["PRUNE_INTERVAL_S", "HistoryPruner"]

log = logging.getLogger(__name__)

# Hourly: history is kept for days, so an hour's overshoot is noise, and a run that
# finds an hour's worth of rows is short.
PRUNE_INTERVAL_S = 3600.0


class HistoryPruner:
    """Deletes history older than ``retention_days`` (0: never) from the store and the
    jobs dir. ``run_once`` is synchronous (call it from a thread); ``stop`` makes a run
    in progress end after its current batch."""

    def __init__(
        self,
        store: Store,
        *,
        retention_days: int,
        jobs_dir: Path,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.retention_days = retention_days
        self.jobs_dir = jobs_dir
        self.metrics = metrics
        self.clock = clock
        self._stop = threading.Event()

    @property
    def enabled(self) -> bool:
        return self.retention_days > 0

    def stop(self) -> None:
        self._stop.set()

    def resume(self) -> None:
        """Let ``run_forever`` run again after ``stop`` (this controller leads again)."""
        self._stop = threading.Event()  # a run still ending sees the old one, set

    def run_once(self) -> PruneResult:
        if not self.enabled:
            return PruneResult()
        cutoff = self.clock() - timedelta(days=self.retention_days)
        dirs = 0

        def remove_dirs(job_ids: Sequence[str]) -> None:
            # Right after the rows of these jobs are committed, and only theirs: a crash
            # in between leaves a dir no job points to (disk space), never a job listed
            # without its dir. Not after the whole prune: a later batch that fails (a
            # full disk, say) would lose the ids, and the dirs would stay forever.
            nonlocal dirs
            dirs += remove_private_data_dirs(self.jobs_dir, job_ids)

        result = prune_history(
            self.store, before=cutoff, stop=self._stop, on_jobs_deleted=remove_dirs
        )
        if self.metrics is not None:
            for kind, count in result.counts().items():
                if count:
                    self.metrics.history_pruned.labels(kind).inc(count)
        if result.total:
            log.info(
                "history pruned",
                extra={
                    **result.counts(),
                    "job_dirs": dirs,
                    "older_than": cutoff.isoformat(timespec="seconds"),
                },
            )
        return result

    async def run_forever(self, interval_s: float = PRUNE_INTERVAL_S) -> None:
        """Prune now (at start), then every ``interval_s``; a failed run is logged and
        retried at the next one."""
        if not self.enabled:
            return
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("pruning history failed; retrying at the next run")
            await asyncio.sleep(interval_s)
