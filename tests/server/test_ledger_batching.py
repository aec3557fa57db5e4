"""Group commit in the ledger, and the SQLite key cache: fast, and still exact."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybrake.server._http import hash_token, now_micros, utc_day
from keybrake.server.ledger import Ledger
from keybrake.server.store import (
    CorrectPriceOp,
    FinishOp,
    KeyRecord,
    LedgerOp,
    Reservation,
    ReserveOp,
    ReserveResult,
    Settlement,
    SpendState,
    SQLiteStore,
    StoreUnavailable,
)

DOLLAR = 1_000_000


class CountingStore(SQLiteStore):
    """Counts the transactions the ledger asks for, and can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.fail = False

    def apply_ledger_ops(self, ops: Any) -> list[Any]:
        if self.fail:
            raise StoreUnavailable("down for the test")
        self.batches.append(len(ops))
        result: list[Any] = super().apply_ledger_ops(ops)
        return result


def key_record(key_id: str = "vk_test", cap: int = 10 * DOLLAR) -> KeyRecord:
    now = now_micros()
    return KeyRecord(
        id=key_id,
        tenant="default",
        token_hash=hash_token(f"vault_key_{key_id}"),
        vendor="stripe",
        label="batching",
        allowed_endpoints=("/v1/**",),
        cap_micros=cap,
        created_at=now,
        expires_at=now + 3_600_000_000,
        max_expires_at=now + 7_200_000_000,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(tmp_path / "ledger.db")
    await store.open()
    await store.insert_key(key_record())
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def ledger(store: CountingStore) -> AsyncIterator[Ledger]:
    ledger = Ledger(store)
    ledger.start()
    try:
        yield ledger
    finally:
        await ledger.close()


def reservation(n: int, amount: int = DOLLAR) -> Reservation:
    return Reservation(f"rsv_{n}", "vk_test", utc_day(now_micros()), amount)


async def reserve(ledger: Ledger, r: Reservation) -> tuple[ReserveResult, SpendState]:
    return await ledger.reserve(r, now_micros(), replay_after=0)


async def test_concurrent_reservations_share_one_commit_and_hold_the_cap(
    ledger: Ledger, store: CountingStore
) -> None:
    results = await asyncio.gather(*(reserve(ledger, reservation(n)) for n in range(25)))
    assert [r for r, _ in results].count(ReserveResult.RESERVED) == 10  # $10 cap, $1 each
    assert [r for r, _ in results[:10]] == [ReserveResult.RESERVED] * 10  # in arrival order
    assert store.batches == [25]  # one transaction for all of them
    assert await store.spend("vk_test", utc_day(now_micros())) == SpendState(0, 10 * DOLLAR)


async def test_a_reservation_is_committed_before_its_caller_goes_on(
    ledger: Ledger, store: CountingStore, tmp_path: Path
) -> None:
    result, _ = await reserve(ledger, reservation(1))
    assert result is ReserveResult.RESERVED
    # Another connection (another process) already sees it: it is durable, not queued.
    other = SQLiteStore(tmp_path / "ledger.db")
    await other.open()
    try:
        assert [e.state for e in await other.ledger("vk_test")] == ["pending"]
    finally:
        await other.close()


async def test_settlements_are_queued_then_written_before_the_next_turn(
    ledger: Ledger, store: CountingStore
) -> None:
    r = reservation(1)
    await reserve(ledger, r)
    await ledger.finish(r, Settlement(DOLLAR // 2))
    assert ledger.queued == 1  # the caller didn't wait for the commit
    await asyncio.sleep(0)
    assert ledger.queued == 0
    assert await store.spend("vk_test", r.day) == SpendState(DOLLAR // 2, 0)


async def test_flush_writes_the_queue_at_once(ledger: Ledger, store: CountingStore) -> None:
    r = reservation(1)
    await reserve(ledger, r)
    await ledger.finish(r, None)
    await ledger.flush()
    assert await store.spend("vk_test", r.day) == SpendState(0, 0)


async def test_a_reservation_cancelled_before_its_batch_reserves_nothing(
    ledger: Ledger, store: CountingStore
) -> None:
    task = asyncio.ensure_future(reserve(ledger, reservation(1)))
    await asyncio.sleep(0)  # queued; the batch runs on the next turn
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.flush()
    assert await store.ledger("vk_test") == []
    assert await store.spend("vk_test", utc_day(now_micros())) == SpendState(0, 0)


async def test_a_reservation_cancelled_after_its_batch_is_released(
    ledger: Ledger, store: CountingStore
) -> None:
    task = asyncio.ensure_future(reserve(ledger, reservation(1)))
    await asyncio.sleep(0)  # the task waits for the batch
    await ledger.flush()  # the batch commits the reservation and wakes the task...
    task.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.flush()
    assert [e.state for e in await store.ledger("vk_test")] == ["released"]
    assert await store.spend("vk_test", utc_day(now_micros())) == SpendState(0, 0)


async def test_a_failed_batch_fails_closed_and_owes_its_settlements(
    ledger: Ledger, store: CountingStore
) -> None:
    settled = reservation(1)
    await reserve(ledger, settled)
    store.fail = True
    await ledger.finish(settled, Settlement(DOLLAR))
    with pytest.raises(StoreUnavailable):
        await reserve(ledger, reservation(2))
    assert ledger.owed == 2  # the settlement, and a release of what may have been reserved
    day = utc_day(now_micros())
    assert await store.spend("vk_test", day) == SpendState(0, DOLLAR)  # still counted
    store.fail = False
    await ledger.close()  # retries what is owed
    assert ledger.owed == 0
    assert await store.spend("vk_test", day) == SpendState(DOLLAR, 0)


async def test_close_writes_what_is_queued(store: CountingStore) -> None:
    ledger = Ledger(store)
    ledger.start()
    r = reservation(1)
    await reserve(ledger, r)
    await ledger.finish(r, Settlement(DOLLAR))
    await ledger.close()
    assert await store.spend("vk_test", r.day) == SpendState(DOLLAR, 0)


async def test_batches_run_in_order_so_settlements_make_room(
    store: CountingStore,
) -> None:
    day = utc_day(now_micros())
    first = reservation(1, 10 * DOLLAR)
    ops: list[LedgerOp] = []
    ops.append(ReserveOp(first, now_micros()))
    ops.append(ReserveOp(reservation(2), now_micros()))  # no room: the cap is taken
    ops.append(FinishOp(first.id, Settlement(5 * DOLLAR), now_micros()))
    ops.append(ReserveOp(reservation(3), now_micros()))  # room again
    results = store.apply_ledger_ops(ops)
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [
        ReserveResult.RESERVED,
        ReserveResult.CAP_EXHAUSTED,
        True,
        ReserveResult.RESERVED,
    ]
    assert await store.spend("vk_test", day) == SpendState(5 * DOLLAR, DOLLAR)


# -- the key cache --------------------------------------------------------------------------


async def test_key_cache_forgets_a_key_revoked_here(store: CountingStore) -> None:
    token_hash = key_record().token_hash
    assert (await store.get_key_by_token_hash(token_hash)) is not None  # now cached
    await store.revoke_key("default", "vk_test", now_micros())
    key = await store.get_key_by_token_hash(token_hash)
    assert key is not None
    assert key.status(now_micros()) == "revoked"


async def test_key_cache_forgets_a_key_changed_by_another_process(
    store: CountingStore, tmp_path: Path
) -> None:
    token_hash = key_record().token_hash
    key = await store.get_key_by_token_hash(token_hash)
    assert key is not None
    assert key.status(now_micros()) == "active"
    other = SQLiteStore(tmp_path / "ledger.db")  # as another `keybrake serve` would be
    await other.open()
    try:
        await other.revoke_key("default", "vk_test", now_micros())
    finally:
        await other.close()
    await asyncio.sleep(0)  # the next request comes on a later turn of the event loop
    key = await store.get_key_by_token_hash(token_hash)
    assert key is not None
    assert key.status(now_micros()) == "revoked"


async def test_key_cache_sees_a_refresh(store: CountingStore) -> None:
    token_hash = key_record().token_hash
    before = await store.get_key_by_token_hash(token_hash)
    assert before is not None
    await store.extend_key("default", "vk_test", now_micros(), before.expires_at + 1)
    after = await store.get_key_by_token_hash(token_hash)
    assert after is not None
    assert after.expires_at == before.expires_at + 1


async def test_unknown_tokens_are_never_cached(store: CountingStore) -> None:
    late = key_record("vk_late")
    assert await store.get_key_by_token_hash(late.token_hash) is None
    await store.insert_key(late)
    assert await store.get_key_by_token_hash(late.token_hash) == late


# -- a batch does what the operations one by one would -------------------------------------


KEYS = ("vk_a", "vk_b", "vk_missing")
DAYS = ("2026-11-26", "2026-11-27")


@st.composite
def op_sequences(draw: st.DrawFn) -> list[LedgerOp]:
    ops: list[LedgerOp] = []
    ids: list[str] = ["rsv_unknown"]
    for n in range(draw(st.integers(min_value=1, max_value=40))):
        kind = draw(st.sampled_from(["reserve", "reserve", "finish", "finish", "correct"]))
        if kind == "reserve":
            rid = f"rsv_{n:03d}"
            ids.append(rid)
            idem = draw(st.sampled_from([None, None, None, "idem_1", "idem_2"]))
            r = Reservation(
                rid,
                draw(st.sampled_from(KEYS)),
                draw(st.sampled_from(DAYS)),
                draw(st.sampled_from([0, 1, 2, 3, 5])) * DOLLAR,
                idem,
            )
            ops.append(ReserveOp(r, 1_000 + n, draw(st.sampled_from([0, 1_005]))))
        elif kind == "finish":
            settlement = draw(
                st.sampled_from(
                    [
                        None,
                        Settlement(DOLLAR),
                        Settlement(0),
                        Settlement(2 * DOLLAR, final=False, object_id="obj_1"),
                    ]
                )
            )
            ops.append(FinishOp(draw(st.sampled_from(ids)), settlement, 2_000 + n))
        else:
            ops.append(CorrectPriceOp("obj_1", draw(st.sampled_from([0, DOLLAR])), 3_000 + n))
    return ops


async def _fresh_store() -> SQLiteStore:
    store = SQLiteStore(":memory:")
    await store.open()
    await store.insert_key(key_record("vk_a", cap=6 * DOLLAR))
    await store.insert_key(key_record("vk_b", cap=3 * DOLLAR))
    return store


async def _tables(store: SQLiteStore) -> tuple[list[Any], list[Any]]:
    conn = store._conn
    assert conn is not None
    spend = conn.execute("SELECT * FROM spend ORDER BY key_id, day").fetchall()
    reservations = conn.execute("SELECT * FROM reservations ORDER BY id").fetchall()
    return spend, reservations


@settings(max_examples=300, deadline=None)
@given(ops=op_sequences(), cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6))
def test_a_batch_gives_what_the_operations_one_by_one_give(
    ops: list[LedgerOp], cuts: list[int]
) -> None:
    async def main() -> None:
        one_by_one, batched = await _fresh_store(), await _fresh_store()
        try:
            expected: list[Any] = []
            for op in ops:
                if isinstance(op, ReserveOp):
                    expected.append(
                        await one_by_one.reserve(
                            op.reservation, op.now, replay_after=op.replay_after
                        )
                    )
                elif isinstance(op, FinishOp):
                    if op.settlement is None:
                        done = await one_by_one.release(op.reservation_id, op.now)
                    else:
                        done = await one_by_one.settle(op.reservation_id, op.settlement, op.now)
                    expected.append(done)
                else:
                    expected.append(await one_by_one.correct_price(op.object_id, op.actual, op.now))
            got: list[Any] = []
            bounds = sorted({0, len(ops), *(c for c in cuts if c < len(ops))})
            for start, end in itertools.pairwise(bounds):
                got += batched.apply_ledger_ops(ops[start:end])
            assert got == expected
            assert await _tables(batched) == await _tables(one_by_one)
        finally:
            await one_by_one.close()
            await batched.close()

    asyncio.run(main())
