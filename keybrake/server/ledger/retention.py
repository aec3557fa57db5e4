"""Retention: what is older than the configured number of days is deleted, in the background.

Audit entries, finished (settled or released) reservations and spend rows older than
``retention_days`` go; pending reservations, the spend rows they hold money on, and keys stay.
A server runs :meth:`Retention.prune_once` :data:`FIRST_PASS_DELAY` seconds after it starts,
then every :data:`RETENTION_INTERVAL` seconds; each pass deletes in short transactions (see
:meth:`~keybrake.server.stores.base.Store.prune`), so requests are served meanwhile. On PostgreSQL
every replica runs it; passes running at once are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from keybrake.server.stores.base import PruneResult, Store, StoreUnavailable

__all__ = ["FIRST_PASS_DELAY", "RETENTION_INTERVAL", "Retention", "cutoff"]

log = logging.getLogger("keybrake.retention")

#: Seconds between two passes.
RETENTION_INTERVAL = 3600.0
#: Seconds from start-up to the first pass, so that it never slows a start.
FIRST_PASS_DELAY = 60.0
_DAY_MICROS = 86_400 * 1_000_000


def cutoff(now: int, days: int) -> int:
    """The moment (epoch microseconds) before which rows are older than ``days`` days."""
    return now - days * _DAY_MICROS


class Retention:
    """The background task that keeps the store to ``days`` days (none when ``days`` is 0)."""

    def __init__(self, store: Store, days: int) -> None:
        self._store = store
        self.days = days
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.days > 0:
            self._task = asyncio.create_task(self._run(), name="keybrake-retention")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def prune_once(self) -> PruneResult:
        """Delete what is older than :attr:`days` days now.

        Raises:
            StoreUnavailable: the store failed (what was deleted before stays deleted).
        """
        return await self._store.prune(cutoff(time.time_ns() // 1000, self.days))

    async def _run(self) -> None:
        delay = FIRST_PASS_DELAY
        while True:
            await asyncio.sleep(delay)
            delay = RETENTION_INTERVAL
            try:
                result = await self.prune_once()
            except StoreUnavailable as exc:
                log.warning("retention: the store is unavailable (%s); next pass later", exc)
                continue
            except Exception:
                log.exception("retention: pruning failed; next pass later")
                continue
            if result.audit_entries or result.reservations or result.spend_rows:
                log.info(
                    "retention: deleted %d audit entries, %d reservations and %d spend rows"
                    " older than %d days",
                    result.audit_entries,
                    result.reservations,
                    result.spend_rows,
                    self.days,
                )
