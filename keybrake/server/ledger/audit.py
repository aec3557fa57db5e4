"""The audit log: every proxy decision, written off the request's critical path.

:meth:`AuditLog.record` only appends to memory; a background task writes batches to the
store. :meth:`AuditLog.close` writes whatever is left, so a clean shutdown loses nothing. If
the store is down, entries wait in memory (up to :data:`MAX_PENDING`) and are written when it
returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import attrs

from keybrake.server.stores.base import AuditEntry, Store, StoreUnavailable
from keybrake.server.util import redact

__all__ = ["MAX_PENDING", "AuditLog", "redact", "redact_entry"]

log = logging.getLogger("keybrake.audit")

#: Entries kept in memory while the store can't take them; older ones are dropped beyond.
MAX_PENDING = 100_000
#: Seconds between writes.
FLUSH_INTERVAL = 0.2
#: Entries written in one transaction; the event loop serves requests between two.
BATCH = 50


def redact_entry(entry: AuditEntry) -> AuditEntry:
    """The entry with :func:`redact` applied to its ``path`` and ``label``."""
    path = redact(entry.path)
    label = None if entry.label is None else redact(entry.label)
    if path is entry.path and label is entry.label:
        return entry
    return attrs.evolve(entry, path=path, label=label)


class AuditLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        #: Why the writer's last attempt failed; None once it has written what was queued.
        self.failing: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keybrake-audit-writer")

    def record(self, entry: AuditEntry) -> None:
        """Queue one decision; never blocks, never touches the store."""
        self._pending.append(entry)
        if len(self._pending) > MAX_PENDING:
            excess = len(self._pending) - MAX_PENDING
            del self._pending[:excess]
            if not self.dropped:  # once per backlog, not once per request
                log.warning("audit log backlog full: the oldest entries are dropped")
            self.dropped += excess
        if len(self._pending) >= BATCH:
            self._wake.set()

    def take(self, limit: int) -> list[AuditEntry]:
        """Hand up to ``limit`` queued entries, redacted, to a writer that will write them,
        or :meth:`give_back` them if it can't."""
        batch, self._pending = self._pending[:limit], self._pending[limit:]
        return [redact_entry(e) for e in batch]

    def give_back(self, entries: list[AuditEntry]) -> None:
        """Put entries a writer could not write back at the front of the queue."""
        self._pending[:0] = entries

    async def flush(self) -> None:
        """Write everything queued so far."""
        while self._pending:
            batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            # Redacted here, off the request path: nothing token-like reaches the store.
            batch = [redact_entry(e) for e in batch]
            try:
                await self._store.write_audit(batch)
            except BaseException:
                self._pending[:0] = batch  # keep them for the next try
                raise
            await asyncio.sleep(0)  # let requests through between batches

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            self._wake.clear()
            try:
                await self.flush()
            except StoreUnavailable as exc:
                self.failing = str(exc)
                log.warning("audit log: store unavailable, %d entries waiting", len(self._pending))
                await asyncio.sleep(1.0)
            except Exception as exc:
                self.failing = repr(exc)
                log.exception("audit log: writing failed; will retry")
                await asyncio.sleep(1.0)
            else:
                self.failing = None
                if self.dropped:
                    log.warning("audit log: %d entries were dropped while backlogged", self.dropped)
                    self.dropped = 0

    async def close(self) -> None:
        """Stop the writer and write what is left."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except StoreUnavailable:
            log.error("audit log: %d entries could not be written at shutdown", len(self._pending))
