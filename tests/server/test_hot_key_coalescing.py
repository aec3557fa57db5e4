"""A hot key on PostgreSQL: a replica's ledger reserves the plain reservations of one key
that arrive while one is at the store together, in one statement, and the cap holds exactly."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from keybrake.server.ledger.ledger import Ledger
from keybrake.server.stores.base import KeyRecord, Reservation, ReserveResult, SpendState
from keybrake.server.stores.postgres.store import PostgresStore
from keybrake.server.util import now_micros, utc_day
from tests.pg import migrated_schema

pytestmark = pytest.mark.postgres

DOLLAR = 1_000_000
_ids = itertools.count()


class CountingStore(PostgresStore):
    """The PostgreSQL store, counting the reservation statements it runs."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.statements = 0
        self.batch_sizes: list[int] = []
        #: A task to cancel just before a batch's results are handed out.
        self.victim: asyncio.Task[object] | None = None

    async def reserve(
        self, reservation: Reservation, now: int, *, replay_after: int = 0
    ) -> tuple[ReserveResult, SpendState]:
        self.statements += 1
        return await super().reserve(reservation, now, replay_after=replay_after)

    async def reserve_many(
        self, reservations: Sequence[Reservation], now: int
    ) -> tuple[ReserveResult, SpendState] | None:
        self.statements += 1
        self.batch_sizes.append(len(reservations))
        outcome = await super().reserve_many(reservations, now)
        if self.victim is not None:
            # Cancelled in the turn its result is set: a timeout firing, a client gone.
            asyncio.get_running_loop().call_soon(self.victim.cancel)
        return outcome


def key_record(cap: int) -> KeyRecord:
    now = now_micros()
    key_id = f"vk_{uuid.uuid4().hex[:12]}"
    return KeyRecord(
        id=key_id,
        tenant="default",
        token_hash=f"hash-{key_id}",
        vendor="stripe",
        label="hot",
        allowed_endpoints=("/v1/**",),
        cap_micros=cap,
        created_at=now,
        expires_at=now + 3_600_000_000,
        max_expires_at=now + 3_600_000_000,
    )


def reservation(key: KeyRecord, amount: int = DOLLAR) -> Reservation:
    return Reservation(f"rsv_{next(_ids):08d}", key.id, utc_day(now_micros()), amount)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with migrated_schema() as schema_url:
        yield schema_url


async def opened(url: str) -> CountingStore:
    store = CountingStore(url)
    await store.open()
    return store


@pytest.fixture
async def store(url: str) -> AsyncIterator[CountingStore]:
    opened_store = await opened(url)
    try:
        yield opened_store
    finally:
        await opened_store.close()


@pytest.fixture
async def ledger(store: CountingStore) -> AsyncIterator[Ledger]:
    replica = Ledger(store)
    try:
        yield replica
    finally:
        await replica.close()


async def test_reserve_many_is_all_or_none(store: CountingStore) -> None:
    key = key_record(cap=10 * DOLLAR)
    await store.insert_key(key)
    three = [reservation(key, 3 * DOLLAR) for _ in range(3)]
    result, state = await store.reserve_many(three, now_micros()) or (None, None)
    assert result is ReserveResult.RESERVED
    assert state == SpendState(0, 9 * DOLLAR)
    # 2 more don't fit under the 1 left: nothing is written, not even the first.
    assert await store.reserve_many([reservation(key), reservation(key)], now_micros()) is None
    assert await store.spend(key.id, three[0].day) == SpendState(0, 9 * DOLLAR)
    assert await store.reserve_many([reservation(key)], now_micros()) is not None
    await store.revoke_key(key.tenant, key.id, now_micros())
    refused = await store.reserve_many([reservation(key)], now_micros())
    assert refused is not None
    assert refused[0] is ReserveResult.KEY_REVOKED
    with pytest.raises(ValueError, match="plain reservations of one key"):
        await store.reserve_many([reservation(key), reservation(key_record(DOLLAR))], 0)


async def test_a_hot_key_is_reserved_in_batches_and_holds_its_cap_exactly(
    store: CountingStore, ledger: Ledger
) -> None:
    key = key_record(cap=25 * DOLLAR)
    await store.insert_key(key)
    results = await asyncio.gather(
        *(ledger.reserve(reservation(key), now_micros(), replay_after=0) for _ in range(40))
    )
    outcomes = [result for result, _ in results]
    assert outcomes.count(ReserveResult.RESERVED) == 25
    assert outcomes.count(ReserveResult.CAP_EXHAUSTED) == 15
    assert await store.spend(key.id, utc_day(now_micros())) == SpendState(0, 25 * DOLLAR)
    # The first goes alone; the other 39 wait for it and go in one statement, which
    # doesn't fit, so they are then reserved one by one, in order, until one is refused
    # (the rest, no smaller, are refused with it).
    assert store.batch_sizes == [39]
    # A cap with room: the 39 go in one statement, 2 statements for 40 requests.
    roomy = key_record(cap=100 * DOLLAR)
    await store.insert_key(roomy)
    store.statements, store.batch_sizes = 0, []
    results = await asyncio.gather(
        *(ledger.reserve(reservation(roomy), now_micros(), replay_after=0) for _ in range(40))
    )
    assert all(result is ReserveResult.RESERVED for result, _ in results)
    assert (store.statements, store.batch_sizes) == (2, [39])
    assert await store.spend(roomy.id, utc_day(now_micros())) == SpendState(0, 40 * DOLLAR)


async def test_two_replicas_hammering_one_key_never_pass_its_cap(url: str) -> None:
    replicas = [await opened(url), await opened(url)]
    ledgers = [Ledger(store) for store in replicas]
    try:
        # Each replica's batch fits the cap alone, not both together: the second to come
        # is refused by the spend row's condition and falls back to one by one.
        key = key_record(cap=70 * DOLLAR)
        await replicas[0].insert_key(key)
        results = await asyncio.gather(
            *(
                ledgers[n % 2].reserve(reservation(key), now_micros(), replay_after=0)
                for n in range(100)
            )
        )
        reserved = [result for result, _ in results if result is ReserveResult.RESERVED]
        assert len(reserved) == 70
        assert await replicas[0].spend(key.id, utc_day(now_micros())) == SpendState(0, 70 * DOLLAR)
        assert sorted(replicas[0].batch_sizes + replicas[1].batch_sizes) == [49, 49]
    finally:
        for ledger, store in zip(ledgers, replicas, strict=True):
            await ledger.close()
            await store.close()


async def queued_behind_one(
    ledger: Ledger, key: KeyRecord, count: int
) -> tuple[asyncio.Task[Any], list[asyncio.Task[Any]]]:
    """A reservation at the store, and ``count`` more of the same key waiting behind it."""
    first = asyncio.create_task(ledger.reserve(reservation(key), now_micros(), replay_after=0))
    await asyncio.sleep(0)  # the first is at the store: the others wait for it
    waiting = [
        asyncio.create_task(ledger.reserve(reservation(key), now_micros(), replay_after=0))
        for _ in range(count)
    ]
    return first, waiting


async def test_a_waiter_cancelled_meanwhile_keeps_nothing_reserved(
    store: CountingStore, ledger: Ledger
) -> None:
    key = key_record(cap=100 * DOLLAR)
    await store.insert_key(key)
    first, waiting = await queued_behind_one(ledger, key, 10)
    await asyncio.sleep(0)
    for task in waiting[:5]:  # cancelled before their batch goes
        task.cancel()
    await first
    await asyncio.sleep(0)
    for task in waiting[5:8]:  # cancelled while their batch is at the store
        task.cancel()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    kept = [d for d in done if not isinstance(d, BaseException)]
    assert all(result is ReserveResult.RESERVED for result, _ in kept)
    await ledger.close()  # lets the batch give back what the cancelled ones reserved
    spend = await store.spend(key.id, utc_day(now_micros()))
    assert spend == SpendState(0, (1 + len(kept)) * DOLLAR)


async def test_a_waiter_cancelled_as_its_result_comes_gives_its_reservation_back(
    store: CountingStore, ledger: Ledger
) -> None:
    key = key_record(cap=100 * DOLLAR)
    await store.insert_key(key)
    first, waiting = await queued_behind_one(ledger, key, 3)
    store.victim = waiting[1]
    await first
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    await ledger.close()
    assert await store.spend(key.id, utc_day(now_micros())) == SpendState(0, 3 * DOLLAR)


async def test_a_key_at_its_cap_refuses_a_batch_in_three_reservation_statements(
    store: CountingStore, ledger: Ledger
) -> None:
    key = key_record(cap=DOLLAR)
    await store.insert_key(key)
    results = await asyncio.gather(
        *(ledger.reserve(reservation(key), now_micros(), replay_after=0) for _ in range(30))
    )
    outcomes = [result for result, _ in results]
    assert outcomes.count(ReserveResult.RESERVED) == 1
    # The first alone; the other 29 together (too much); then one of them alone, which
    # is refused, and the other 28 refused with it, being no smaller.
    assert store.statements == 3
    # A smaller amount still gets its own try, in the same batch.
    more = await asyncio.gather(
        ledger.reserve(reservation(key, DOLLAR), now_micros(), replay_after=0),
        ledger.reserve(reservation(key, DOLLAR), now_micros(), replay_after=0),
        ledger.reserve(reservation(key, DOLLAR // 2), now_micros(), replay_after=0),
    )
    assert [result for result, _ in more] == [ReserveResult.CAP_EXHAUSTED] * 3
    assert store.statements == 3 + 1 + 1 + 1 + 1  # alone, together, one, the smaller one
