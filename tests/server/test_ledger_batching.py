"""Group commit in the ledger, and the SQLite key cache: fast, and still exact."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from keybrake.server._keys import LEDGER, STORE
from keybrake.server.api import routes as api
from keybrake.server.app import create_app
from keybrake.server.ledger import ledger as ledger_module
from keybrake.server.ledger.audit import AuditLog
from keybrake.server.ledger.ledger import Ledger
from keybrake.server.stores.base import (
    AuditEntry,
    BudgetRecord,
    CorrectPriceOp,
    FinishOp,
    KeyRecord,
    LedgerOp,
    Reservation,
    ReserveOp,
    ReserveResult,
    Settlement,
    SpendState,
    StoreUnavailable,
)
from keybrake.server.stores.sqlite.store import SQLiteStore
from keybrake.server.util import hash_token, now_micros, utc_day
from tests.conftest import make_config

DOLLAR = 1_000_000


class CountingStore(SQLiteStore):
    """Counts the transactions the ledger asks for, and can be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, serving=True)
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


async def in_flight(ledger: Ledger) -> None:
    """Reserve for a request that is still waiting for the vendor: later ones batch."""
    result, _ = await reserve(ledger, reservation(999, 0))
    assert result is ReserveResult.RESERVED


async def test_a_lone_reservation_commits_at_once(ledger: Ledger, store: CountingStore) -> None:
    r = reservation(1)
    queued = asyncio.ensure_future(reserve(ledger, r))
    result, _ = await reserve(ledger, reservation(2))  # nothing in flight: no wait for a turn
    assert result is ReserveResult.RESERVED
    assert store.batches == [1]
    assert not queued.done()  # asked for after, while the first was in flight: batched
    await queued


async def test_concurrent_reservations_share_one_commit_and_hold_the_cap(
    ledger: Ledger, store: CountingStore
) -> None:
    await in_flight(ledger)
    results = await asyncio.gather(*(reserve(ledger, reservation(n)) for n in range(25)))
    assert [r for r, _ in results].count(ReserveResult.RESERVED) == 10  # $10 cap, $1 each
    assert [r for r, _ in results[:10]] == [ReserveResult.RESERVED] * 10  # in arrival order
    assert store.batches == [1, 25]  # one transaction for all 25
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


async def test_a_settlement_goes_with_the_next_reservation(
    ledger: Ledger, store: CountingStore
) -> None:
    r = reservation(1)
    await reserve(ledger, r)
    await ledger.finish(r, Settlement(DOLLAR // 2))
    assert ledger.queued == 1  # the caller didn't wait for the commit
    await asyncio.sleep(0.01)
    assert ledger.queued == 1  # nor does the settlement need a transaction of its own
    store.batches.clear()
    second = reservation(2)
    await reserve(ledger, second)
    assert ledger.queued == 0
    assert store.batches == [2]  # one commit: the settlement, then the reservation
    assert await store.spend("vk_test", r.day) == SpendState(DOLLAR // 2, DOLLAR)


async def test_a_settlement_is_written_within_the_delay(
    ledger: Ledger, store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "SETTLE_DELAY", 0.02)
    r = reservation(1)
    await reserve(ledger, r)
    await ledger.finish(r, Settlement(DOLLAR // 2))
    assert ledger.queued == 1
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not ledger.queued:
            break
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
    await in_flight(ledger)
    task = asyncio.ensure_future(reserve(ledger, reservation(1)))
    await asyncio.sleep(0)  # queued; the batch runs on the next turn
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.flush()
    assert [e.id for e in await store.ledger("vk_test")] == ["rsv_999"]
    assert await store.spend("vk_test", utc_day(now_micros())) == SpendState(0, 0)


async def test_a_reservation_cancelled_after_its_batch_is_released(
    ledger: Ledger, store: CountingStore
) -> None:
    await in_flight(ledger)
    task = asyncio.ensure_future(reserve(ledger, reservation(1)))
    await asyncio.sleep(0)  # the task waits for the batch
    await ledger.flush()  # the batch commits the reservation and wakes the task...
    task.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.flush()
    assert sorted((e.id, e.state) for e in await store.ledger("vk_test")) == [
        ("rsv_1", "released"),
        ("rsv_999", "pending"),
    ]
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


async def test_a_second_server_on_the_same_file_refuses_to_start(
    store: CountingStore, tmp_path: Path
) -> None:
    second = SQLiteStore(tmp_path / "ledger.db", serving=True)
    with pytest.raises(StoreUnavailable, match="another keybrake server is using"):
        await second.open()
    # Anything that doesn't serve (keybrake tokens, a reader) may still open it.
    reader = SQLiteStore(tmp_path / "ledger.db")
    await reader.open()
    try:
        assert await reader.get_key_by_token_hash(key_record().token_hash) is not None
    finally:
        await reader.close()
    await store.close()  # the lock goes with the server
    await second.open()
    await second.close()


async def test_only_a_serving_store_caches_keys(tmp_path: Path) -> None:
    token_hash = key_record().token_hash
    writer = SQLiteStore(tmp_path / "plain.db")
    reader = SQLiteStore(tmp_path / "plain.db")
    await writer.open()
    await reader.open()
    try:
        await writer.insert_key(key_record())
        assert await reader.get_key_by_token_hash(token_hash) is not None
        await writer.revoke_key("default", "vk_test", now_micros())
        key = await reader.get_key_by_token_hash(token_hash)
        assert key is not None
        assert key.status(now_micros()) == "revoked"
    finally:
        await reader.close()
        await writer.close()


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


KEYS = ("vk_a", "vk_b", "vk_c", "vk_missing")
#: vk_c draws from this budget too (its reservations and settlements move its rows).
BUDGET = "bud_run"
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
            key_id = draw(st.sampled_from(KEYS))
            r = Reservation(
                rid,
                key_id,
                draw(st.sampled_from(DAYS)),
                draw(st.sampled_from([0, 1, 2, 3, 5])) * DOLLAR,
                idem,
                budget_id=BUDGET if key_id == "vk_c" else None,
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


async def _fresh_store(*, serving: bool = False) -> SQLiteStore:
    store = SQLiteStore(":memory:", serving=serving)
    await store.open()
    await store.insert_key(key_record("vk_a", cap=6 * DOLLAR))
    await store.insert_key(key_record("vk_b", cap=3 * DOLLAR))
    now = now_micros()
    await store.insert_budget(
        BudgetRecord(BUDGET, "default", "run", 4 * DOLLAR, now, now + 3_600_000_000)
    )
    await store.insert_key(attrs.evolve(key_record("vk_c", cap=3 * DOLLAR), budget_id=BUDGET))
    return store


async def _tables(store: SQLiteStore) -> tuple[list[Any], list[Any]]:
    conn = store._conn
    assert conn is not None
    spend = conn.execute("SELECT * FROM spend ORDER BY key_id, day").fetchall()
    reservations = conn.execute("SELECT * FROM reservations ORDER BY id").fetchall()
    budgets = conn.execute("SELECT * FROM budget_spend ORDER BY budget_id, day").fetchall()
    return spend, reservations + budgets


async def _one_by_one(store: SQLiteStore, op: LedgerOp) -> Any:
    if isinstance(op, ReserveOp):
        return await store.reserve(op.reservation, op.now, replay_after=op.replay_after)
    if isinstance(op, FinishOp):
        if op.settlement is None:
            return await store.release(op.reservation_id, op.now)
        return await store.settle(op.reservation_id, op.settlement, op.now)
    assert isinstance(op, CorrectPriceOp)
    return await store.correct_price(op.object_id, op.actual, op.now)


@settings(max_examples=300, deadline=None)
@given(
    ops=op_sequences(),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    singles=st.lists(st.booleans(), max_size=7),
)
def test_a_batch_gives_what_the_operations_one_by_one_give(
    ops: list[LedgerOp], cuts: list[int], singles: list[bool]
) -> None:
    """Any cut of the operations into batches, some run one by one in between (as the
    ledger's retries do), in a serving store that remembers spend rows across batches."""

    async def main() -> None:
        one_by_one, batched = await _fresh_store(), await _fresh_store(serving=True)
        try:
            expected = [await _one_by_one(one_by_one, op) for op in ops]
            got: list[Any] = []
            bounds = sorted({0, len(ops), *(c for c in cuts if c < len(ops))})
            for n, (start, end) in enumerate(itertools.pairwise(bounds)):
                if n < len(singles) and singles[n]:
                    got += [await _one_by_one(batched, op) for op in ops[start:end]]
                else:
                    got += batched.apply_ledger_ops(ops[start:end])
            assert got == expected
            assert await _tables(batched) == await _tables(one_by_one)
        finally:
            await one_by_one.close()
            await batched.close()

    asyncio.run(main())


# -- audit entries ride along with batches that no reservation waits for --------------------


def audit_entry(path: str = "/v1/payment_intents") -> AuditEntry:
    return AuditEntry(
        at=now_micros(),
        tenant="default",
        key_id="vk_test",
        label="batching",
        vendor="stripe",
        method="POST",
        path=path,
        decision="allowed",
        status=200,
    )


async def test_audit_entries_ride_along_with_settlements_not_reservations(
    ledger: Ledger, store: CountingStore
) -> None:
    audit = AuditLog(store)  # its own writer is not started: only the ledger writes
    ledger.audit = audit
    r = reservation(1)
    audit.record(audit_entry("/v1/first?vault_key_secret"))
    await reserve(ledger, r)  # a batch a reservation waits for: no audit entries in it
    assert store.batches == [1]
    assert (
        len(
            await store.list_audit(
                "default", key_id=None, decision=None, limit=10, starting_after=None
            )
        )
        == 0
    )
    await ledger.finish(r, Settlement(DOLLAR))
    audit.record(audit_entry())
    await ledger.flush()  # the settlement's batch (due after a while): it takes both along
    assert store.batches == [1, 2]  # the settlement and one audit write, one transaction
    written = await store.list_audit(
        "default", key_id=None, decision=None, limit=10, starting_after=None
    )
    assert sorted(e.path for e in written) == ["/v1/first?vault_key_***", "/v1/payment_intents"]


async def test_audit_entries_go_back_when_the_batch_fails(
    ledger: Ledger, store: CountingStore
) -> None:
    audit = AuditLog(store)
    ledger.audit = audit
    r = reservation(1)
    await reserve(ledger, r)
    store.fail = True
    await ledger.finish(r, Settlement(DOLLAR))
    audit.record(audit_entry())
    await ledger.flush()
    store.fail = False
    assert len(audit.take(10)) == 1  # still queued for the audit writer


# -- the API reads spend after the queue -----------------------------------------------------


async def test_the_api_writes_queued_settlements_before_it_reads_spend(tmp_path: Path) -> None:
    config = make_config(tmp_path / "api.db", "http://127.0.0.1:9")
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await app[STORE].insert_key(key_record())
        ledger = app[LEDGER]
        r = reservation(1)
        await reserve(ledger, r)
        await ledger.finish(r, Settlement(DOLLAR))
        assert ledger.queued == 1  # the settlement waits for the next turn of the loop...
        auth = {"Authorization": f"Bearer {config.admin_token}"}
        # ...and the handlers run before that turn: they must write the queue themselves.
        key = make_mocked_request(
            "GET", "/v1/keys/vk_test", headers=auth, match_info={"key_id": "vk_test"}, app=app
        )
        answer = json.loads(cast(bytes, (await api.get_key(key)).body))
        assert (answer["spent_today_usd"], answer["reserved_today_usd"]) == ("1.00", "0.00")
        await ledger.finish(reservation(2), None)  # (nothing to release: just queued again)
        usage = make_mocked_request("GET", "/v1/usage", headers=auth, app=app)
        answer = json.loads(cast(bytes, (await api.list_usage(usage)).body))
        assert answer["data"][0]["spent_usd"] == "1.00"
        assert ledger.queued == 0
    finally:
        await runner.cleanup()
