"""Reserving and settling spend so that every reservation ends exactly once.

A reservation is settled (the vendor may have charged) or released (it certainly did not),
once, whatever happens to the request in between:

- a handler cancelled while reserving gives back what it reserved;
- settling runs to its end even if the handler is cancelled;
- when the store is down, a settlement (or the release of a reservation whose outcome is
  unknown) waits in memory and is retried until the store answers. Until then the money
  stays reserved, so the cap errs on the side of counting too much, never too little.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from keybrake.server._http import now_micros
from keybrake.server.store import (
    Reservation,
    ReserveResult,
    Settlement,
    SpendState,
    Store,
    StoreUnavailable,
)

__all__ = ["Ledger"]

log = logging.getLogger("keybrake.ledger")

#: Seconds between retries of settlements the store could not take.
RETRY_INTERVAL = 0.5


class Ledger:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._inline = bool(getattr(store, "runs_inline", False))
        self._owed: dict[str, Settlement | None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def owed(self) -> int:
        """How many settlements are waiting for the store to come back."""
        return len(self._owed)

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_forever(), name="keybrake-ledger-retry")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._retry_owed()
        if self._owed:
            log.error(
                "%d reservations could not be settled before shutdown; they stay reserved",
                len(self._owed),
            )

    async def reserve(
        self, reservation: Reservation, now: int, *, replay_after: int
    ) -> tuple[ReserveResult, SpendState]:
        """Reserve, atomically against the cap.

        Raises:
            StoreUnavailable: the store failed; whatever it may have reserved is released
                as soon as it can be.
        """
        if self._inline:
            # The store answers without ever suspending: no cancellation can land between
            # the reservation and its result, so there is nothing to shield.
            try:
                return await self._store.reserve(reservation, now, replay_after=replay_after)
            except StoreUnavailable:
                self._owe(reservation.id, None)
                raise
        task = asyncio.ensure_future(
            self._store.reserve(reservation, now, replay_after=replay_after)
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                result, _ = await task
            except StoreUnavailable:
                self._owe(reservation.id, None)
                raise asyncio.CancelledError from None
            if result is ReserveResult.RESERVED:
                await self.finish(reservation, None)
            raise
        except StoreUnavailable:
            # The reservation may have been committed before the failure: release it (a
            # release of a reservation that doesn't exist changes nothing).
            self._owe(reservation.id, None)
            raise

    async def finish(self, reservation: Reservation | None, settlement: Settlement | None) -> None:
        """Settle (or, without a settlement, release) a reservation, even if cancelled."""
        if reservation is None:
            return
        if self._inline:
            await self._apply(reservation.id, settlement)  # never suspends: nothing to shield
            return
        task = asyncio.ensure_future(self._apply(reservation.id, settlement))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    async def _apply(self, reservation_id: str, settlement: Settlement | None) -> None:
        try:
            await self._once(reservation_id, settlement)
        except StoreUnavailable:
            self._owe(reservation_id, settlement)

    async def _once(self, reservation_id: str, settlement: Settlement | None) -> None:
        if settlement is None:
            await self._store.release(reservation_id, now_micros())
        else:
            await self._store.settle(reservation_id, settlement, now_micros())

    def _owe(self, reservation_id: str, settlement: Settlement | None) -> None:
        # A settlement wins over a release queued for the same reservation.
        if settlement is not None or reservation_id not in self._owed:
            self._owed[reservation_id] = settlement
        log.warning("store unavailable: settlement of %s will be retried", reservation_id)
        self._wake.set()

    async def _retry_owed(self) -> None:
        for reservation_id, settlement in list(self._owed.items()):
            try:
                await self._once(reservation_id, settlement)
            except StoreUnavailable:
                return
            # Settling and releasing only touch pending reservations: a retry of one that
            # did land the first time changes nothing, so nothing is counted twice.
            if self._owed.get(reservation_id, settlement) is settlement:
                self._owed.pop(reservation_id, None)

    async def _retry_forever(self) -> None:
        while True:
            await self._wake.wait()
            while self._owed:
                await asyncio.sleep(RETRY_INTERVAL)
                await self._retry_owed()
            self._wake.clear()
