"""Reserving and settling spend so that every reservation ends exactly once.

A reservation is settled (the vendor may have charged) or released (it certainly did not),
once, whatever happens to the request in between:

- a handler cancelled while reserving gives back what it reserved;
- settling runs to its end even if the handler is cancelled;
- when the store is down, a settlement (or the release of a reservation whose outcome is
  unknown) waits in memory and is retried until the store answers. Until then the money
  stays reserved, so the cap errs on the side of counting too much, never too little.

With a store that runs in the event loop's thread (SQLite), the ledger also **batches**: every
operation asked for during one turn of the event loop runs in one transaction with one
commit, at the start of the next turn (group commit). When no other request is in flight, a
reservation doesn't wait for the turn: it commits at once, with whatever is queued. Either
way a reservation is committed before its request is forwarded, and each is still checked
against the cap on its own, in the order they were asked for, so the cap holds exactly. A
settlement doesn't wait: the answer goes back to the client while it is queued, and it is
committed with the next reservation's transaction or, if none comes, within
:data:`SETTLE_DELAY` seconds; so a busy server commits once per turn, and a server with one
request at a time once per request, not twice. A crash between the answer and that commit
leaves the reservation pending at its bound: counted too much, never too little.
:meth:`Ledger.flush` writes the queue now; the API calls it before reading spend, so what
it shows includes every request answered so far.

With a store shared by replicas (PostgreSQL), the ledger **coalesces** the reservations of
a hot key instead: while one reservation of a key (and day) is at the store, the plain ones
(only the key's cap at stake) asked for meanwhile wait, and go together in one statement and
one commit as soon as it is back (:meth:`CoalescingStore.reserve_many`). Their sum is checked
against the cap by the same conditional update as one reservation's, all or none; when it
doesn't fit, they are reserved one by one, in the order they were asked for, so the cap
holds exactly and every request that fits gets in. So a replica keeps at most one
reservation statement per key at the store, whatever its load, and the key's spend row is
locked once per batch rather than once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, runtime_checkable

from keybrake.server.ledger.audit import AuditLog, redact_entry
from keybrake.server.stores.base import (
    AdmitOp,
    AuditEntry,
    AuditOp,
    CorrectPriceOp,
    FinishOp,
    LedgerOp,
    Reservation,
    ReserveOp,
    ReserveResult,
    Settlement,
    SpendState,
    Store,
    StoreUnavailable,
)
from keybrake.server.util import now_micros, utc_day

__all__ = ["Ledger"]

log = logging.getLogger("keybrake.ledger")

#: Seconds between retries of settlements the store could not take.
RETRY_INTERVAL = 0.5
#: Longest a queued settlement waits for a reservation's transaction to go with, in seconds.
SETTLE_DELAY = 0.05
#: Most audit entries written along with one batch.
AUDIT_PER_BATCH = 200


@runtime_checkable
class BatchingStore(Protocol):
    """A store that runs ledger operations in the caller's thread, several per commit."""

    def apply_ledger_ops(self, ops: Sequence[LedgerOp]) -> list[Any]: ...


@runtime_checkable
class CoalescingStore(Protocol):
    """A store that reserves several plain reservations of one key in one step."""

    async def reserve_many(
        self, reservations: Sequence[Reservation], now: int
    ) -> tuple[ReserveResult, SpendState] | None: ...


_Queued = tuple[LedgerOp, "asyncio.Future[Any] | None"]
_Waiting = tuple[Reservation, int, "asyncio.Future[tuple[ReserveResult, SpendState]]"]


class Ledger:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._batching: BatchingStore | None = store if isinstance(store, BatchingStore) else None
        self._coalescing: CoalescingStore | None = (
            store if self._batching is None and isinstance(store, CoalescingStore) else None
        )
        #: Per key and day with a reservation at the store: the plain ones waiting for it.
        self._lanes: dict[tuple[str, str], list[_Waiting]] = {}
        #: Batches being reserved, and releases of reservations whose requests went away.
        self._background: set[asyncio.Task[None]] = set()
        self._queue: list[_Queued] = []
        self._flush_scheduled = False
        self._flush_timer: asyncio.TimerHandle | None = None
        #: Reservations made and not finished yet: requests the vendor is answering.
        self._unfinished = 0
        #: Where a batching ledger takes audit entries to write along with its batches.
        self.audit: AuditLog | None = None
        self._owed: dict[str, Settlement | None] = {}
        #: Why the store last refused a write (what ``/healthz`` reports while :attr:`owed`).
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def batches(self) -> bool:
        """Whether settlements are queued (and so never wait for the store)."""
        return self._batching is not None

    @property
    def queued(self) -> int:
        """How many operations wait for the next batch."""
        return len(self._queue)

    @property
    def owed(self) -> int:
        """How many settlements are waiting for the store to come back."""
        return len(self._owed)

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_forever(), name="keybrake-ledger-retry")

    async def close(self) -> None:
        while self._background:  # a batch may start a release while it is awaited
            await asyncio.gather(*self._background, return_exceptions=True)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flush_queue()
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
        if self._batching is not None:
            return await self._reserve_batched(reservation, now, replay_after)
        if self._coalescing is not None and reservation.plain:
            lane = self._lanes.get((reservation.key_id, reservation.day))
            if lane is not None:
                return await self._reserve_with_lane(lane, reservation, now)
            return await self._reserve_opening_lane(reservation, now, replay_after)
        return await self._reserve_alone(reservation, now, replay_after)

    async def _reserve_alone(
        self, reservation: Reservation, now: int, replay_after: int
    ) -> tuple[ReserveResult, SpendState]:
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

    async def _reserve_opening_lane(
        self, reservation: Reservation, now: int, replay_after: int
    ) -> tuple[ReserveResult, SpendState]:
        """Reserve alone, while the key's plain reservations asked for meanwhile queue up;
        then hand them to a task of their own that reserves them together."""
        lane_key = (reservation.key_id, reservation.day)
        lane: list[_Waiting] = []
        self._lanes[lane_key] = lane
        try:
            return await self._reserve_alone(reservation, now, replay_after)
        finally:
            if lane:
                self._spawn(self._drain(lane_key, lane))
            else:
                del self._lanes[lane_key]

    async def _reserve_with_lane(
        self, lane: list[_Waiting], reservation: Reservation, now: int
    ) -> tuple[ReserveResult, SpendState]:
        done: asyncio.Future[tuple[ReserveResult, SpendState]]
        done = asyncio.get_running_loop().create_future()
        lane.append((reservation, now, done))
        try:
            return await done
        except asyncio.CancelledError:
            # Cancelled while waiting: the lane skips it; while its batch is at the store:
            # the batch gives it back. After its result came: give it back here.
            if _reserved(done):
                self._release_later(reservation.id)
            raise

    def _release_later(self, reservation_id: str) -> None:
        """Release a reservation whose request is gone, in a task of its own (awaited by
        :meth:`close`), so that the caller's cancellation can't stop it."""
        self._spawn(self._apply(reservation_id, None))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task of its own, which :meth:`close` waits for."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fail(
        self,
        reservation: Reservation,
        done: asyncio.Future[tuple[ReserveResult, SpendState]],
        message: str,
    ) -> None:
        """Tell a waiter its reservation failed, and release it as soon as the store can
        (the store may have written it before failing; a release of nothing changes
        nothing)."""
        self._owe(reservation.id, None)
        if not done.done():
            done.set_exception(StoreUnavailable(message))

    async def _drain(self, lane_key: tuple[str, str], lane: list[_Waiting]) -> None:
        """Reserve the lane's waiting reservations, a batch at a time, until none wait."""
        batch: list[_Waiting] = []
        try:
            while batch := [w for w in lane if not w[2].cancelled()]:
                lane.clear()
                await self._reserve_together(batch)
        except BaseException as exc:
            # Whatever stopped the drain (a shutdown, a bug), no waiter waits forever, and a
            # reservation the store may have written is released as soon as it can be.
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("reserving a batch of %s failed", lane_key[0])
            for r, _, done in batch:
                if not done.done():
                    self._fail(r, done, "the ledger could not reserve")
            raise
        finally:
            del self._lanes[lane_key]
            for _, _, done in lane:  # not taken yet: nothing was written for them
                if not done.done():
                    done.set_exception(StoreUnavailable("the ledger could not reserve"))

    async def _reserve_together(self, batch: list[_Waiting]) -> None:
        store = self._coalescing
        assert store is not None
        outcome: tuple[ReserveResult, SpendState] | None = None
        if len(batch) > 1:
            reservations = [r for r, _, _ in batch]
            try:
                outcome = await store.reserve_many(reservations, max(n for _, n, _ in batch))
            except StoreUnavailable as exc:
                for r, _, done in batch:
                    self._fail(r, done, str(exc))
                return
        if outcome is not None:
            for r, _, done in batch:
                self._deliver(r, done, outcome)
            return
        # One alone, or a sum that doesn't fit: one by one, each against the cap in turn.
        # Once an amount didn't fit, a larger one wouldn't have either: it is refused with
        # the same reading of the spend row, without a statement of its own (a key stuck at
        # its cap costs a batch three statements, not two per request).
        refused: tuple[int, tuple[ReserveResult, SpendState]] | None = None
        for r, now, done in batch:
            if done.cancelled():
                continue
            if refused is not None and r.amount >= refused[0]:
                self._deliver(r, done, refused[1])
                continue
            try:
                result = await self._store.reserve(r, now)
            except StoreUnavailable as exc:
                self._fail(r, done, str(exc))
                continue
            if result[0] is ReserveResult.CAP_EXHAUSTED and (
                refused is None or r.amount < refused[0]
            ):
                refused = (r.amount, result)
            self._deliver(r, done, result)

    def _deliver(
        self,
        reservation: Reservation,
        done: asyncio.Future[tuple[ReserveResult, SpendState]],
        result: tuple[ReserveResult, SpendState],
    ) -> None:
        """Give a waiter its result; a waiter gone meanwhile gives back what it reserved."""
        if not done.done():
            done.set_result(result)
        elif result[0] is ReserveResult.RESERVED:
            self._release_later(reservation.id)

    async def admit(self, key_id: str, now: int) -> tuple[ReserveResult, SpendState]:
        """Admit a free request of a key with brakes (a rate limit, a use count): checked and
        counted in one atomic step, and on a batching store in the order asked for, with the
        reservations of the same turn (like them, it is committed before the request is
        forwarded). A use counted for a handler cancelled meanwhile stays counted: too many,
        never too few.

        Raises:
            StoreUnavailable: the store failed (nothing is forwarded).
        """
        if self._batching is None:
            return await self._store.admit(key_id, now)
        op = AdmitOp(key_id, now)
        if self._unfinished == 0:
            self._queue.append((op, None))
            results = self._flush_queue()
            if results is None:
                raise StoreUnavailable("the ledger could not admit the request")
            admitted: tuple[ReserveResult, SpendState] = results[-1]
            return admitted
        done: asyncio.Future[tuple[ReserveResult, SpendState]]
        done = asyncio.get_running_loop().create_future()
        self._enqueue(op, done)
        return await done

    async def finish(self, reservation: Reservation | None, settlement: Settlement | None) -> None:
        """Settle (or, without a settlement, release) a reservation, even if cancelled."""
        if reservation is None:
            return
        if self._batching is not None:
            self._unfinished = max(0, self._unfinished - 1)
            self._enqueue(FinishOp(reservation.id, settlement, now_micros()), None)
            return
        task = asyncio.ensure_future(self._apply(reservation.id, settlement))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    async def correct_price(self, object_id: str, actual: int) -> None:
        """Replace an estimate with the price the vendor reported for ``object_id``.

        Raises:
            StoreUnavailable: the store failed (a batching ledger logs it instead: the
                estimate, an upper bound, stays counted).
        """
        if self._batching is not None:
            self._enqueue(CorrectPriceOp(object_id, actual, now_micros()), None)
            return
        await self._store.correct_price(object_id, actual, now_micros())

    async def counted(self, key_id: str, object_id: str) -> int:
        """What ``key_id`` counted today (UTC) for a vendor object, settlements still queued
        included.

        Raises:
            StoreUnavailable: the store failed.
        """
        self._flush_queue()
        return await self._store.counted(key_id, object_id, utc_day(now_micros()))

    async def flush(self) -> None:
        """Write every queued operation now (a no-op unless the store batches)."""
        self._flush_queue()

    async def commit_audit(self, entry: AuditEntry) -> None:
        """Write one audit entry (redacted) and return once it is committed: durable audit.

        A batching ledger writes it with the batch of this turn of the event loop (group
        commit), with the operations queued before it, the request's settlement included,
        and the other entries of the turn; otherwise the store writes it on its own. If the
        caller is cancelled meanwhile, the write still ends, and an entry it could not write
        waits in the audit log's queue instead.

        Raises:
            StoreUnavailable: the entry could not be written.
        """
        entry = redact_entry(entry)
        written: asyncio.Future[Any]
        if self._batching is not None:
            written = asyncio.get_running_loop().create_future()
            self._enqueue(AuditOp([entry]), written)
        else:
            written = asyncio.ensure_future(self._store.write_audit([entry]))
        try:
            await asyncio.shield(written)
        except asyncio.CancelledError:
            written.add_done_callback(lambda done: self._requeue_unwritten(entry, done))
            raise

    def _requeue_unwritten(self, entry: AuditEntry, written: asyncio.Future[Any]) -> None:
        if (written.cancelled() or written.exception() is not None) and self.audit is not None:
            self.audit.record(entry)

    async def _reserve_batched(
        self, reservation: Reservation, now: int, replay_after: int
    ) -> tuple[ReserveResult, SpendState]:
        op = ReserveOp(reservation, now, replay_after)
        if self._unfinished == 0:
            # No other request is between its reservation and its settlement, so none is
            # likely to join a batch: commit at once rather than wait for the loop's turn.
            self._queue.append((op, None))
            results = self._flush_queue()
            if results is None:
                raise StoreUnavailable("the ledger could not write the reservation")
            result: tuple[ReserveResult, SpendState] = results[-1]
        else:
            done: asyncio.Future[tuple[ReserveResult, SpendState]]
            done = asyncio.get_running_loop().create_future()
            self._enqueue(op, done)
            try:
                result = await done
            except asyncio.CancelledError:
                # Cancelled before the batch ran: the batch skips it. After: give back what
                # it reserved (the batch runs in one go, so there is no third case).
                if _reserved(done):
                    self._enqueue(FinishOp(reservation.id, None, now_micros()), None)
                raise
        if result[0] is ReserveResult.RESERVED:
            self._unfinished += 1
        return result

    def _enqueue(self, op: LedgerOp, done: asyncio.Future[Any] | None) -> None:
        """Queue ``op``: for the next turn if someone waits for it, else for a while."""
        self._queue.append((op, done))
        if self._flush_scheduled:
            return
        loop = asyncio.get_running_loop()
        if done is not None:
            self._flush_scheduled = True
            loop.call_soon(self._flush_queue)
        elif self._flush_timer is None:
            self._flush_timer = loop.call_later(SETTLE_DELAY, self._flush_queue)

    def _flush_queue(self) -> list[Any] | None:
        """Run the queue in one transaction; never raises.

        A batch without reservations (settlements after their answers, mostly) also takes
        the audit entries waiting, so they need no transaction of their own; a batch that
        a reservation waits for never does.

        Returns:
            The results of the operations run (those not cancelled meanwhile), or None if
            the store failed (what failed is owed, or its waiter told).
        """
        self._flush_scheduled = False
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        store, queue, self._queue = self._batching, self._queue, []
        live = [(op, done) for op, done in queue if done is None or not done.cancelled()]
        if store is None or not live:
            return []
        ops = [op for op, _ in live]
        audit = self.audit
        entries: list[AuditEntry] = []
        if audit is not None and not any(isinstance(op, (ReserveOp, AdmitOp)) for op in ops):
            entries = audit.take(AUDIT_PER_BATCH)
            if entries:
                ops.append(AuditOp(entries))
        try:
            results = store.apply_ledger_ops(ops)[: len(live)]
        except StoreUnavailable as exc:
            self.last_error = str(exc)
            if audit is not None and entries:
                audit.give_back(entries)
            for op, done in live:
                if isinstance(op, ReserveOp):
                    # Nothing was committed, but release anyway, as the unbatched path does.
                    self._owe(op.reservation.id, None)
                    if done is not None:
                        done.set_exception(StoreUnavailable(str(exc)))
                elif isinstance(op, FinishOp):
                    self._owe(op.reservation_id, op.settlement)
                elif isinstance(op, CorrectPriceOp):
                    log.warning("store unavailable: the price of %s stays estimated", op.object_id)
                elif done is not None:  # a durable audit entry (commit_audit)
                    done.set_exception(StoreUnavailable(str(exc)))
            return None
        for (_, done), result in zip(live, results, strict=True):
            if done is not None:
                done.set_result(result)
        return results

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
            except StoreUnavailable as exc:
                self.last_error = str(exc)
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


def _reserved(done: asyncio.Future[tuple[ReserveResult, SpendState]]) -> bool:
    """Whether a reservation's future holds a reservation made (which its caller, gone,
    must give back)."""
    return (
        done.done()
        and not done.cancelled()
        and done.exception() is None
        and done.result()[0] is ReserveResult.RESERVED
    )
