"""Brakes in the store, on both stores, with a fake clock: rate limits (a ring of the last N), use
counts and run budgets, each one atomic step with the reservation."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keybrake.server.stores.base import (
    PRUNE_CHUNK,
    AdmitOp,
    BudgetInactive,
    BudgetRecord,
    KeyRecord,
    LedgerOp,
    Reservation,
    ReserveOp,
    ReserveResult,
    Settlement,
    Store,
)
from keybrake.server.stores.postgres.store import PostgresStore
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.pg import migrated_schema

DAY = "2026-11-27"
NOW = 1_000_000_000
SECOND = 1_000_000
_ids = itertools.count()


def braked_key(
    *,
    rate_limit: str | None = None,
    max_requests: int | None = None,
    budget_id: str | None = None,
    cap: int = 10**12,
    tenant: str = "default",
) -> KeyRecord:
    key_id = f"vk_{uuid.uuid4().hex[:12]}"
    return KeyRecord(
        id=key_id,
        tenant=tenant,
        token_hash=f"hash-{key_id}",
        vendor="stripe",
        label="brakes",
        allowed_endpoints=("/v1/**",),
        cap_micros=cap,
        created_at=NOW,
        expires_at=NOW + 10**12,
        max_expires_at=NOW + 10**12,
        rate_limit=rate_limit,
        max_requests=max_requests,
        budget_id=budget_id,
    )


def reservation(key: KeyRecord, amount: int = 1) -> Reservation:
    return Reservation(
        id=f"rsv_{next(_ids):012d}",
        key_id=key.id,
        day=DAY,
        amount=amount,
        budget_id=key.budget_id,
        braked=key.braked,
    )


@attrs.frozen
class Arrival:
    at: int  # micros after NOW
    priced: bool


UNITS = {"s": 1, "m": 60, "h": 3600}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    limit=st.integers(1, 5),
    unit=st.sampled_from(["s", "m"]),
    gaps=st.lists(
        st.tuples(st.integers(0, 400_000), st.booleans(), st.integers(1, 3)),
        min_size=1,
        max_size=40,
    ),
)
async def test_no_window_ever_sees_more_than_the_rate_and_none_is_refused_needlessly(
    store: Store, limit: int, unit: str, gaps: list[tuple[int, bool, int]]
) -> None:
    """For random arrival times (free and priced requests, in batches on SQLite): at most N
    admitted in any window of the rate's length, and a refusal only when admitting would
    break that (exactness); ``Retry-After`` is when the oldest request leaves the window."""
    window = UNITS[unit] * SECOND
    # Gaps are scaled to the window, so that windows overlap, fill up and drain.
    scale = window // 100_000
    key = braked_key(rate_limit=f"{limit}/{unit}")
    await store.insert_key(key)
    admitted: list[int] = []
    now = NOW
    arrivals: list[list[Arrival]] = []
    for gap, priced, batch in gaps:
        now += gap * scale
        arrivals.append([Arrival(now, priced)] * batch)
    for group in arrivals:
        ops: list[LedgerOp] = [
            ReserveOp(reservation(key), a.at) if a.priced else AdmitOp(key.id, a.at) for a in group
        ]
        if isinstance(store, SQLiteStore) and len(ops) > 1:
            results = store.apply_ledger_ops(ops)  # one group commit, checked in order
        else:
            results = []
            for op in ops:
                if isinstance(op, ReserveOp):
                    results.append(await store.reserve(op.reservation, op.now))
                else:
                    assert isinstance(op, AdmitOp)
                    results.append(await store.admit(op.key_id, op.now))
        for arrival, (result, state) in zip(group, results, strict=True):
            in_window = [t for t in admitted if t > arrival.at - window]
            if len(in_window) < limit:
                expected = ReserveResult.RESERVED if arrival.priced else ReserveResult.ADMITTED
                assert result is expected
                admitted.append(arrival.at)
            else:
                assert result is ReserveResult.RATE_LIMITED
                assert state.retry_after == min(in_window) + window - arrival.at
    for t in admitted:
        assert len([u for u in admitted if t - window < u <= t]) <= limit
    info = await store.get_key(key.tenant, key.id)
    assert info is not None
    assert info.requests_used == len(admitted)


async def test_gcra_like_bursts_are_refused(store: Store) -> None:
    """N at once, then one more a 1/N of the window later: a token bucket would let it
    through; a sliding window of the contract must not."""
    key = braked_key(rate_limit="4/s")
    await store.insert_key(key)
    for _ in range(4):
        assert (await store.admit(key.id, NOW))[0] is ReserveResult.ADMITTED
    result, state = await store.admit(key.id, NOW + SECOND // 4)
    assert result is ReserveResult.RATE_LIMITED
    assert state.retry_after == SECOND - SECOND // 4
    assert (await store.admit(key.id, NOW + SECOND))[0] is ReserveResult.ADMITTED


async def test_a_refusal_for_the_rate_or_the_cap_counts_no_use(store: Store) -> None:
    key = braked_key(rate_limit="2/m", max_requests=3, cap=5)
    await store.insert_key(key)
    assert (await store.reserve(reservation(key, 5), NOW))[0] is ReserveResult.RESERVED
    assert (await store.reserve(reservation(key, 1), NOW))[0] is ReserveResult.CAP_EXHAUSTED
    assert (await store.admit(key.id, NOW))[0] is ReserveResult.ADMITTED
    assert (await store.admit(key.id, NOW))[0] is ReserveResult.RATE_LIMITED
    info = await store.get_key(key.tenant, key.id)
    assert info is not None
    assert info.requests_used == 2
    # A minute on, the third use is the last.
    assert (await store.admit(key.id, NOW + 60 * SECOND))[0] is ReserveResult.ADMITTED
    assert (await store.admit(key.id, NOW + 120 * SECOND))[0] is ReserveResult.USES_EXHAUSTED
    result, _ = await store.reserve(reservation(key, 0), NOW + 120 * SECOND)
    assert result is ReserveResult.USES_EXHAUSTED


async def test_max_requests_holds_exactly_under_concurrency(store: Store) -> None:
    key = braked_key(max_requests=7)
    await store.insert_key(key)
    results = await asyncio.gather(
        *(
            store.reserve(reservation(key), NOW) if i % 2 else store.admit(key.id, NOW)
            for i in range(30)
        )
    )
    outcomes = [result for result, _ in results]
    assert outcomes.count(ReserveResult.USES_EXHAUSTED) == 23
    info = await store.get_key(key.tenant, key.id)
    assert info is not None
    assert info.requests_used == 7


def budget(cap: int, *, tenant: str = "default", expires_at: int = NOW + 10**12) -> BudgetRecord:
    return BudgetRecord(
        id=f"bud_{uuid.uuid4().hex[:12]}",
        tenant=tenant,
        label="run",
        cap_micros=cap,
        created_at=NOW,
        expires_at=expires_at,
    )


async def test_a_budget_caps_its_keys_together(store: Store) -> None:
    run = budget(10)
    await store.insert_budget(run)
    a, b = braked_key(budget_id=run.id, cap=8), braked_key(budget_id=run.id, cap=8)
    await store.insert_key(a)
    await store.insert_key(b)
    ra, rb = reservation(a, 6), reservation(b, 4)
    assert (await store.reserve(ra, NOW))[0] is ReserveResult.RESERVED
    assert (await store.reserve(rb, NOW))[0] is ReserveResult.RESERVED
    result, state = await store.reserve(reservation(b, 1), NOW)
    assert result is ReserveResult.BUDGET_EXHAUSTED
    assert (state.budget_cap, state.budget_spent) == (10, 10)
    # The refusal left nothing behind on the key.
    assert (await store.spend(b.id, DAY)).reserved == 4
    # Settling below the bound and releasing give the rest back to the budget.
    assert await store.settle(ra.id, Settlement(5), NOW)
    assert await store.release(rb.id, NOW)
    spend = await store.budget_spend(run.id, DAY)
    assert (spend.spent, spend.reserved) == (5, 0)
    # The key's own cap still holds within the budget.
    assert (await store.reserve(reservation(a, 4), NOW))[0] is ReserveResult.CAP_EXHAUSTED
    assert (await store.reserve(reservation(a, 3), NOW))[0] is ReserveResult.RESERVED


async def test_a_request_past_both_caps_is_refused_for_the_keys(store: Store) -> None:
    """Both stores give the same answer: the key's cap is checked first, then the budget's."""
    run = budget(5)
    await store.insert_budget(run)
    key = braked_key(budget_id=run.id, cap=5)
    await store.insert_key(key)
    result, state = await store.reserve(reservation(key, 6), NOW)
    assert result is ReserveResult.CAP_EXHAUSTED
    assert (state.spent, state.reserved) == (0, 0)
    assert (await store.budget_spend(run.id, DAY)).reserved == 0


async def test_a_key_revoked_or_expired_since_it_was_read_reserves_and_admits_nothing(
    store: Store,
) -> None:
    """The proxy reads a key's status before the body and the pricing look-ups; the atomic
    step that counts the request checks it again."""
    run = budget(100)
    await store.insert_budget(run)
    keys = [
        braked_key(),
        braked_key(max_requests=5),
        braked_key(rate_limit="5/s"),
        braked_key(budget_id=run.id),
    ]
    for key in keys:
        await store.insert_key(key)
    await store.revoke_budget("default", run.id, NOW)
    for key in keys[:3]:
        assert await store.revoke_key("default", key.id, NOW) is not None
    for key in keys:
        assert (await store.reserve(reservation(key), NOW))[0] is ReserveResult.KEY_REVOKED
        if key.braked:
            assert (await store.admit(key.id, NOW))[0] is ReserveResult.KEY_REVOKED
        assert (await store.spend(key.id, DAY)).reserved == 0
    later = NOW + 10**12
    fresh = [braked_key(), braked_key(max_requests=5)]
    for key in fresh:
        await store.insert_key(key)
        assert (await store.reserve(reservation(key), later))[0] is ReserveResult.KEY_EXPIRED
    assert (await store.admit(fresh[1].id, later))[0] is ReserveResult.KEY_EXPIRED


async def test_a_budget_holds_exactly_under_concurrency(store: Store) -> None:
    run = budget(25)
    await store.insert_budget(run)
    keys = [braked_key(budget_id=run.id, cap=100, max_requests=1000) for _ in range(2)]
    keys.append(braked_key(budget_id=run.id, cap=100))
    for key in keys:
        await store.insert_key(key)
    results = await asyncio.gather(
        *(store.reserve(reservation(keys[i % 3], 1), NOW) for i in range(60))
    )
    outcomes = [result for result, _ in results]
    assert outcomes.count(ReserveResult.RESERVED) == 25
    assert outcomes.count(ReserveResult.BUDGET_EXHAUSTED) == 35
    spend = await store.budget_spend(run.id, DAY)
    assert (spend.spent, spend.reserved) == (0, 25)


async def test_revoking_a_budget_revokes_its_keys(store: Store) -> None:
    run, other = budget(10), budget(10)
    await store.insert_budget(run)
    await store.insert_budget(other)
    mine, theirs = braked_key(budget_id=run.id), braked_key(budget_id=other.id)
    await store.insert_key(mine)
    await store.insert_key(theirs)
    revoked = await store.revoke_budget("default", run.id, NOW + 5)
    assert revoked is not None
    assert revoked.revoked_at == NOW + 5
    key = await store.get_key_by_token_hash(mine.token_hash)
    assert key is not None
    assert key.revoked_at == NOW + 5
    untouched = await store.get_key_by_token_hash(theirs.token_hash)
    assert untouched is not None
    assert untouched.revoked_at is None
    assert await store.revoke_budget("other", other.id, NOW) is None  # not that tenant's
    try:
        await store.insert_key(braked_key(budget_id=run.id))
    except BudgetInactive:
        pass
    else:
        raise AssertionError("a key was issued into a revoked budget")


async def test_a_budgets_old_days_are_pruned_once_nothing_is_reserved(store: Store) -> None:
    run = budget(10)
    await store.insert_budget(run)
    key = braked_key(budget_id=run.id)
    await store.insert_key(key)
    old, pending = reservation(key, 3), reservation(key, 2)
    for r in (old, pending):
        assert (await store.reserve(attrs.evolve(r, day="2026-01-01"), NOW))[0] is (
            ReserveResult.RESERVED
        )
    await store.settle(old.id, Settlement(3), NOW)
    before = 1_800_000_000 * SECOND  # January 2027: 2026-01-01 is long gone
    await store.prune(before)
    assert (await store.budget_spend(run.id, "2026-01-01")).reserved == 2  # still in flight
    await store.release(pending.id, NOW)
    result = await store.prune(before)
    assert result.spend_rows == 2  # the key's day and the budget's
    assert (await store.budget_spend(run.id, "2026-01-01")).spent == 0  # no row any more


async def test_a_full_keys_refusal_reads_one_slot_whatever_its_rate(tmp_path: Path) -> None:
    """A key of 10,000/h that has used its hour is refused in as many SQLite operations as
    one of 10/h: the check reads the slot of the N-th latest request, never the N rows (a
    flooded key's refusals run on the event loop thread)."""
    store = SQLiteStore(tmp_path / "kb.db")
    await store.open()
    try:
        operations = {}
        for limit in (10, 10_000):
            key = braked_key(rate_limit=f"{limit}/h")
            await store.insert_key(key)
            filled = store.apply_ledger_ops([AdmitOp(key.id, NOW + i) for i in range(limit)])
            assert {result for result, _ in filled} == {ReserveResult.ADMITTED}
            conn = store._conn
            assert conn is not None
            counted = [0]

            def count(counted: list[int] = counted) -> int:
                counted[0] += 1
                return 0

            conn.set_progress_handler(count, 1)
            try:
                result, state = await store.admit(key.id, NOW + SECOND)
            finally:
                conn.set_progress_handler(None, 1)
            assert result is ReserveResult.RATE_LIMITED
            assert state.retry_after == 3600 * SECOND - SECOND
            operations[limit] = counted[0]
        assert operations[10_000] <= operations[10] + 50, operations
    finally:
        await store.close()


async def _hits_rows(store: Store, key_id: str) -> int:
    if isinstance(store, SQLiteStore):
        conn = store._conn
        assert conn is not None
        return int(
            conn.execute("SELECT count(*) FROM key_hits WHERE key_id = ?", (key_id,)).fetchone()[0]
        )
    assert isinstance(store, PostgresStore)
    rows: int = await store._run(
        lambda c: c.fetchval("SELECT count(*) FROM key_hits WHERE key_id = $1", key_id)
    )
    return rows


async def test_a_key_keeps_at_most_its_rates_number_of_hits(store: Store) -> None:
    """3/s over 20 seconds of steady use: the ring holds 3 rows, never one per request."""
    key = braked_key(rate_limit="3/s")
    await store.insert_key(key)
    admitted = 0
    for tick in range(80):
        result, _ = await store.admit(key.id, NOW + tick * SECOND // 4)
        admitted += result is ReserveResult.ADMITTED
    assert admitted == 60  # 3 of each 4 ticks of a second
    assert await _hits_rows(store, key.id) == 3


async def test_the_hits_of_keys_long_revoked_or_expired_are_pruned(store: Store) -> None:
    revoked = braked_key(rate_limit="3/s")
    expired = attrs.evolve(braked_key(rate_limit="3/s"), expires_at=NOW + 10 * SECOND)
    live = braked_key(rate_limit="3/s")
    # More hits than a prune chunk: deleted over several chunks.
    big = attrs.evolve(braked_key(rate_limit=f"{PRUNE_CHUNK + 5}/h"), expires_at=NOW + SECOND)
    for key in (revoked, expired, live, big):
        await store.insert_key(key)
        for _ in range(3):
            assert (await store.admit(key.id, NOW))[0] is ReserveResult.ADMITTED
    if isinstance(store, SQLiteStore):
        store.apply_ledger_ops([AdmitOp(big.id, NOW)] * PRUNE_CHUNK)
    else:
        await asyncio.gather(*(store.admit(big.id, NOW) for _ in range(PRUNE_CHUNK)))
    assert await _hits_rows(store, big.id) == PRUNE_CHUNK + 3
    await store.revoke_key("default", revoked.id, NOW + SECOND)
    await store.prune(NOW + 20 * SECOND)
    assert [await _hits_rows(store, k.id) for k in (revoked, expired, live, big)] == [0, 0, 3, 0]


@pytest.mark.postgres
async def test_a_replica_whose_clock_runs_ahead_does_not_double_the_rate() -> None:
    """Two replicas, one an hour and a bit ahead: a key of 2/h used up on the first is
    refused on the second too, since both time rate limits by the database's clock."""
    now = time.time_ns() // 1000
    key = attrs.evolve(
        braked_key(rate_limit="2/h"), expires_at=now + 10**10, max_expires_at=now + 10**10
    )
    async with migrated_schema() as url:
        replicas = [PostgresStore(url), PostgresStore(url)]
        for replica in replicas:
            await replica.open()
        try:
            on_time, ahead = replicas
            await on_time.insert_key(key)
            for _ in range(2):
                assert (await on_time.admit(key.id, now))[0] is ReserveResult.ADMITTED
            result, state = await ahead.admit(key.id, now + 3601 * SECOND)
            assert result is ReserveResult.RATE_LIMITED
            assert 3500 * SECOND < state.retry_after <= 3600 * SECOND
        finally:
            for replica in replicas:
                await replica.close()
