"""The same store contract, run against both stores: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs
import pytest

from keybrake.server.stores.base import (
    AuditEntry,
    IdempotencyConflict,
    IdempotentIssue,
    KeyRecord,
    Reservation,
    ReserveResult,
    Settlement,
    SpendState,
    Store,
    StoreUnavailable,
)
from keybrake.server.stores.postgres.store import PostgresStore, SchemaMismatch
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.pg import PG_URL, migrated_schema

DAY = "2026-11-27"
NOW = 1_000_000


def key(
    key_id: str = "vk_1",
    *,
    tenant: str = "default",
    cap: int = 10_000_000,
    expires_at: int = NOW + 10**9,
    created_at: int = NOW,
) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        tenant=tenant,
        token_hash=f"hash-{key_id}",
        vendor="stripe",
        label="l",
        allowed_endpoints=("/v1/**",),
        cap_micros=cap,
        created_at=created_at,
        expires_at=expires_at,
        max_expires_at=NOW + 2 * 10**9,
        metadata={"a": "b"},
    )


async def test_keys(store: Store) -> None:
    await store.insert_key(key("vk_1", created_at=NOW))
    await store.insert_key(key("vk_2", created_at=NOW + 1, expires_at=NOW + 5))
    await store.insert_key(key("vk_3", created_at=NOW + 2, tenant="other"))
    assert await store.get_key("default", "vk_1") == key("vk_1")
    assert await store.get_key("other", "vk_1") is None
    assert (await store.get_key_by_token_hash("hash-vk_2")) == key(
        "vk_2", created_at=NOW + 1, expires_at=NOW + 5
    )

    async def ids(**options: object) -> list[str]:
        args: dict[str, object] = {
            "status": None,
            "limit": 10,
            "starting_after": None,
            "now": NOW + 10,
            **options,
        }
        return [k.id for k in await store.list_keys("default", **args)]  # type: ignore[arg-type]

    assert await ids() == ["vk_2", "vk_1"]
    assert await ids(status="active") == ["vk_1"]
    assert await ids(status="expired") == ["vk_2"]
    assert await ids(limit=1) == ["vk_2"]
    assert await ids(starting_after="vk_2") == ["vk_1"]

    revoked = await store.revoke_key("default", "vk_1", NOW + 20)
    assert revoked is not None
    assert revoked.revoked_at == NOW + 20
    again = await store.revoke_key("default", "vk_1", NOW + 30)
    assert again is not None
    assert again.revoked_at == NOW + 20
    assert await ids(status="revoked") == ["vk_1"]
    assert await store.revoke_key("other", "vk_1", NOW) is None
    assert await store.count_active_keys(NOW + 10) == 1  # vk_3 of the other tenant

    await store.insert_key(key("vk_4"))
    extended = await store.extend_key("default", "vk_4", NOW, NOW + 3 * 10**9)
    assert extended is not None
    assert extended.expires_at == extended.max_expires_at  # never past it


async def test_idempotent_issue(store: Store) -> None:
    issue = IdempotentIssue("vk_1", "fp", "sealed")
    await store.insert_key(key("vk_1"), idempotency=("idem", issue))
    assert await store.find_idempotent_issue("default", "idem") == issue
    with pytest.raises(IdempotencyConflict):
        await store.insert_key(key("vk_2"), idempotency=("idem", issue))
    assert await store.get_key("default", "vk_2") is None  # all or nothing


async def test_reservations_race_the_cap(store: Store) -> None:
    await store.insert_key(key(cap=1_000_000))

    async def reserve(i: int) -> ReserveResult:
        result, _ = await store.reserve(Reservation(f"r{i}", "vk_1", DAY, 30_000), NOW)
        return result

    results = await asyncio.gather(*(reserve(i) for i in range(100)))
    assert results.count(ReserveResult.RESERVED) == 33
    state = await store.spend("vk_1", DAY)
    assert (state.spent, state.reserved) == (0, 990_000)


async def test_settle_release_and_correct_happen_once(store: Store) -> None:
    await store.insert_key(key(cap=1_000_000))
    for i in range(3):
        result, _ = await store.reserve(Reservation(f"r{i}", "vk_1", DAY, 100_000), NOW)
        assert result is ReserveResult.RESERVED
    assert await store.settle("r0", Settlement(80_000), NOW)
    assert not await store.settle("r0", Settlement(80_000), NOW)
    assert not await store.release("r0", NOW)
    assert await store.release("r1", NOW)
    assert not await store.release("r1", NOW)
    assert not await store.release("nope", NOW)
    assert await store.settle("r2", Settlement(100_000, final=False, object_id="SM1"), NOW)
    assert await store.correct_price("SM1", 70_000, NOW)
    assert not await store.correct_price("SM1", 1, NOW)
    state = await store.spend("vk_1", DAY)
    assert (state.spent, state.reserved) == (150_000, 0)
    ledger = {e.id: (e.state, e.settled_amount, e.final) for e in await store.ledger("vk_1")}
    assert ledger == {
        "r0": ("settled", 80_000, True),
        "r1": ("released", 0, True),
        "r2": ("settled", 70_000, True),
    }


async def test_a_replay_is_free_only_once_the_first_is_counted(store: Store) -> None:
    await store.insert_key(key(cap=1_000_000))

    async def reserve(rid: str) -> ReserveResult:
        result, _ = await store.reserve(Reservation(rid, "vk_1", DAY, 1000, idem_hash="k"), NOW)
        return result

    assert await reserve("r0") is ReserveResult.RESERVED
    # While the first is in flight it may still be refused (and released): a repeat is
    # priced as a new request, never waved through on the strength of a pending one.
    assert await reserve("r1") is ReserveResult.RESERVED
    await store.release("r1", NOW)
    await store.settle("r0", Settlement(1000), NOW)
    results = await asyncio.gather(*(reserve(f"r{i}") for i in range(2, 12)))
    assert set(results) == {ReserveResult.REPLAY}
    assert await store.spend("vk_1", DAY) == SpendState(1000, 0)
    # A released request may be sent again under its key: it is reserved again.
    await store.insert_key(key("vk_2", cap=1_000_000))
    first = Reservation("s0", "vk_2", DAY, 1000, idem_hash="k")
    assert (await store.reserve(first, NOW))[0] is ReserveResult.RESERVED
    await store.release("s0", NOW)
    again = Reservation("s1", "vk_2", DAY, 1000, idem_hash="k")
    assert (await store.reserve(again, NOW))[0] is ReserveResult.RESERVED


async def test_admin_tokens_audit_and_usage(store: Store) -> None:
    await store.add_admin_token("tok_1", "h1", "team-a", NOW)
    await store.add_admin_token("tok_2", "h2", "team-b", NOW)
    assert await store.tenant_for_admin_token("h1") == "team-a"
    assert await store.revoke_admin_token("tok_1", NOW)
    assert not await store.revoke_admin_token("tok_nope", NOW)
    assert await store.tenant_for_admin_token("h1") is None
    assert await store.count_admin_tokens() == 2  # every token ever made, revoked or not
    assert [t.id for t in await store.list_admin_tokens()] == ["tok_1", "tok_2"]

    entries = [
        AuditEntry(
            at=NOW + i,
            tenant="team-a",
            key_id="vk_1",
            label="l",
            vendor="stripe",
            method="POST",
            path="/v1/x",
            decision="allowed" if i % 2 else "cap_exhausted",
            status=200,
            reserved=i,
            settled=i,
            upstream_ms=1.5,
        )
        for i in range(5)
    ]
    await store.write_audit(entries)
    listed = await store.list_audit(
        "team-a", key_id=None, decision=None, limit=10, starting_after=None
    )
    assert [e.reserved for e in listed] == [4, 3, 2, 1, 0]
    assert listed[0].id is not None
    page = await store.list_audit(
        "team-a", key_id="vk_1", decision="allowed", limit=1, starting_after=listed[0].id
    )
    assert [e.reserved for e in page] == [3]
    assert (
        await store.list_audit("team-b", key_id=None, decision=None, limit=10, starting_after=None)
        == []
    )

    await store.insert_key(key("vk_9", tenant="team-a"))
    await store.reserve(Reservation("r", "vk_9", DAY, 5), NOW)
    rows = await store.usage("team-a", key_id=None, day=None, limit=10, starting_after=None)
    assert [(r.key_id, r.reserved) for r in rows] == [("vk_9", 5)]
    assert await store.usage("team-b", key_id=None, day=None, limit=10, starting_after=None) == []


@pytest.mark.postgres
async def test_postgres_refuses_an_unknown_schema() -> None:
    async with migrated_schema() as url:
        import asyncpg

        schema = url.rpartition("schema=")[2]
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'INSERT INTO "{schema}".keybrake_schema_version VALUES (99)')
        finally:
            await conn.close()
        with pytest.raises(SchemaMismatch, match="keybrake migrate"):
            await PostgresStore(url).open()


async def test_postgres_unreachable_fails_closed() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:9/none")
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_a_sqlite_database_of_the_previous_schema_is_upgraded_in_place(
    tmp_path: Path,
) -> None:
    import json
    import sqlite3

    from keybrake.server.stores.base import KeyRecord
    from keybrake.server.stores.sqlite.schema import SCHEMA_VERSION

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript((Path(__file__).parent / "data" / "sqlite_schema_v2.sql").read_text())
    conn.execute(
        "INSERT INTO keys VALUES ('vk_old', 'default', 'hash', 'stripe', 'run', ?, 5000000,"
        " 1, 9999999999999999, 9999999999999999, NULL, '{}')",
        (json.dumps(["/v1/**"]),),
    )
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.get_key("default", "vk_old")
        assert old is not None
        assert (old.cap_micros, old.stripe_account) == (5_000_000, None)
        new = KeyRecord(
            id="vk_new",
            tenant="default",
            token_hash="hash2",
            vendor="stripe",
            label="run",
            allowed_endpoints=("/v1/**",),
            cap_micros=1,
            created_at=1,
            expires_at=10,  # active at the times below: admission checks it
            max_expires_at=10,
            stripe_account="acct_1",
            rate_limit="1/h",
            max_requests=5,
        )
        await store.insert_key(new)
        assert await store.get_key("default", "vk_new") == new
        # The brakes' columns and tables (schema 5) are there, on old keys too.
        assert (await store.admit("vk_new", 2))[0] is ReserveResult.ADMITTED
        assert (await store.admit("vk_new", 3))[0] is ReserveResult.RATE_LIMITED
        assert (await store.admit("vk_old", 3))[0] is ReserveResult.ADMITTED
        reserved = await store.reserve(Reservation("rsv_old", "vk_old", "2026-11-27", 1), 3)
        assert reserved[0] is ReserveResult.RESERVED
        upgraded = await store.get_key("default", "vk_new")
        assert upgraded is not None
        assert upgraded.requests_used == 1
    finally:
        await store.close()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    check.close()


async def test_an_object_is_counted_per_day(store: Store) -> None:
    """What a key counted for a vendor object yesterday doesn't pay for acting on it today:
    staged before midnight and confirmed after, it counts against both days' caps."""
    await store.insert_key(key(cap=1_000_000))
    await store.reserve(Reservation("y", "vk_1", "2026-11-26", 1000), NOW)
    await store.settle("y", Settlement(1000, object_id="pi_1"), NOW)
    await store.reserve(Reservation("t", "vk_1", DAY, 300), NOW)
    await store.settle("t", Settlement(300, object_id="pi_1"), NOW)
    assert await store.counted("vk_1", "pi_1", "2026-11-26") == 1000
    assert await store.counted("vk_1", "pi_1", DAY) == 300


def labelled(
    key_id: str,
    label: str,
    *,
    tenant: str = "default",
    vendor: str = "stripe",
    metadata: dict[str, str] | None = None,
    expires_at: int = NOW + 10**9,
) -> KeyRecord:
    return attrs.evolve(
        key(key_id, tenant=tenant, expires_at=expires_at),
        label=label,
        vendor=vendor,
        metadata={} if metadata is None else metadata,
    )


async def test_revoke_keys_matches_every_filter_given(store: Store) -> None:
    for k in (
        labelled("vk_a", "run-42-a", metadata={"user": "ann", "run": "42"}),
        labelled("vk_b", "run-42-b", vendor="twilio", metadata={"user": "ann", "run": "42"}),
        labelled("vk_c", "run-43", metadata={"user": "ann", "run": "43"}),
        labelled("vk_d", "RUN-42-upper", metadata={"user": "bob", "run": "42"}),
        labelled("vk_e", "other", metadata={"user": "ann"}),
    ):
        await store.insert_key(k)
    later = NOW + 10
    assert await store.revoke_keys("default", later, label_prefix="run-42", vendor="twilio") == [
        "vk_b"
    ]
    # Case counts: "RUN-42-upper" is not under "run-42".
    assert await store.revoke_keys("default", later, label_prefix="run-42") == ["vk_a"]
    assert await store.revoke_keys("default", later, metadata={"user": "ann", "run": "43"}) == [
        "vk_c"
    ]
    # Every pair must hold, with exactly that value.
    assert await store.revoke_keys("default", later, metadata={"user": "bob", "run": "4"}) == []
    assert await store.revoke_keys("default", later, metadata={"user": "Bob"}) == []
    assert await store.revoke_keys("default", later, metadata={"run": "42"}) == ["vk_d"]
    assert await store.revoke_keys("default", later, all=True) == ["vk_e"]
    for key_id in ("vk_a", "vk_b", "vk_c", "vk_d", "vk_e"):
        revoked = await store.get_key("default", key_id)
        assert revoked is not None
        assert revoked.status(later) == "revoked"


async def test_revoke_keys_takes_a_prefix_literally(store: Store) -> None:
    for key_id, label in (
        ("vk_1", "50%_off\\x"),
        ("vk_2", "50%_off\\y"),
        ("vk_3", "50%Xoff\\x"),  # what "_" would match as a wildcard
        ("vk_4", "50abc_off\\x"),  # what "%" would match as a wildcard
        ("vk_5", "50%_offAx"),  # what an unescaped "\" would let through
    ):
        await store.insert_key(labelled(key_id, label))
    assert await store.revoke_keys("default", NOW, label_prefix="50%_off\\") == ["vk_1", "vk_2"]
    assert await store.revoke_keys("default", NOW, label_prefix="50%_") == ["vk_5"]
    assert await store.revoke_keys("default", NOW, all=True) == ["vk_3", "vk_4"]


async def test_revoke_keys_touches_only_active_keys_of_the_tenant(store: Store) -> None:
    await store.insert_key(labelled("vk_mine", "run"))
    await store.insert_key(labelled("vk_theirs", "run", tenant="other"))
    await store.insert_key(labelled("vk_expired", "run", expires_at=NOW + 5))
    await store.insert_key(labelled("vk_revoked", "run"))
    await store.revoke_key("default", "vk_revoked", NOW + 1)

    assert await store.revoke_keys("default", NOW + 5, all=True) == ["vk_mine"]
    theirs = await store.get_key("other", "vk_theirs")
    assert theirs is not None
    assert theirs.revoked_at is None
    expired = await store.get_key("default", "vk_expired")
    assert expired is not None
    assert expired.revoked_at is None  # stays "expired"
    earlier = await store.get_key("default", "vk_revoked")
    assert earlier is not None
    assert earlier.revoked_at == NOW + 1  # its first revocation stands
    assert await store.revoke_keys("default", NOW + 6, all=True) == []


async def test_revoke_keys_refuses_no_filter(store: Store) -> None:
    await store.insert_key(labelled("vk_1", "run"))
    with pytest.raises(ValueError, match=r"at least one filter"):
        await store.revoke_keys("default", NOW)
    with pytest.raises(ValueError, match=r"label_prefix is empty"):
        await store.revoke_keys("default", NOW, label_prefix="")
    with pytest.raises(ValueError, match=r"metadata is empty"):
        await store.revoke_keys("default", NOW, metadata={})
    found = await store.get_key("default", "vk_1")
    assert found is not None
    assert found.revoked_at is None


async def test_concurrent_bulk_revocations_revoke_each_key_once(store: Store) -> None:
    for i in range(20):
        await store.insert_key(labelled(f"vk_{i:02}", "run"))
    results = await asyncio.gather(
        *(store.revoke_keys("default", NOW + i, label_prefix="run") for i in range(5))
    )
    ids = [key_id for result in results for key_id in result]
    assert sorted(ids) == [f"vk_{i:02}" for i in range(20)]


async def test_a_serving_sqlite_store_forgets_the_keys_it_revokes_in_bulk(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "kb.db", serving=True)
    await store.open()
    try:
        await store.insert_key(labelled("vk_1", "run"))
        cached = await store.get_key_by_token_hash("hash-vk_1")
        assert cached is not None
        assert cached.revoked_at is None
        await store.revoke_keys("default", NOW, label_prefix="run")
        found = await store.get_key_by_token_hash("hash-vk_1")
        assert found is not None
        assert found.revoked_at == NOW
    finally:
        await store.close()
