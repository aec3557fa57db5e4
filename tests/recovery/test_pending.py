"""Reservations a stopped server left pending are resolved: counted at their bounds, marked
unconfirmed, and shown as such (never left lowering the cap forever, never lost)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keybrake.server.stores.base import (
    KeyRecord,
    Reservation,
    ReserveResult,
    Settlement,
    SpendState,
)
from keybrake.server.stores.postgres.store import PostgresStore
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.pg import migrated_schema, private_postgres

DAY = "2026-12-02"
NOW = 1_000_000


def key(key_id: str = "vk_1") -> KeyRecord:
    return KeyRecord(
        id=key_id,
        tenant="default",
        token_hash=f"hash-{key_id}",
        vendor="stripe",
        label="run",
        allowed_endpoints=("/v1/**",),
        cap_micros=10_000_000,
        created_at=NOW,
        expires_at=NOW + 10**12,
        max_expires_at=NOW + 10**12,
    )


async def test_sqlite_resolves_what_the_last_server_left_pending(tmp_path: Path) -> None:
    db = tmp_path / "kb.db"
    crashed = SQLiteStore(db)
    await crashed.open()
    await crashed.insert_key(key())
    for rid, amount in (("r1", 1_000_000), ("r2", 2_500_000), ("r3", 700_000)):
        result, _ = await crashed.reserve(Reservation(rid, "vk_1", DAY, amount), NOW)
        assert result is ReserveResult.RESERVED
    await crashed.settle("r3", Settlement(500_000), NOW)  # answered before the crash
    await crashed.close()  # as if killed: r1 and r2 were never settled

    # A tool that opens the file (not a server) changes nothing.
    tool = SQLiteStore(db)
    await tool.open()
    assert await tool.spend("vk_1", DAY) == SpendState(500_000, 3_500_000)
    await tool.close()

    server = SQLiteStore(db, serving=True)
    await server.open()
    try:
        assert await server.spend("vk_1", DAY) == SpendState(4_000_000, 0, 3_500_000)
        assert await server.unconfirmed(DAY) == 3_500_000
        states = {e.id: (e.state, e.settled_amount) for e in await server.ledger("vk_1")}
        assert states == {
            "r1": ("settled", 1_000_000),
            "r2": ("settled", 2_500_000),
            "r3": ("settled", 500_000),
        }
        # A settlement arriving late (it can't: the server that would send it is gone)
        # would change nothing: only pending reservations are settled.
        assert not await server.settle("r1", Settlement(1), NOW)
    finally:
        await server.close()


@pytest.mark.postgres
async def test_postgres_replicas_resolve_what_a_stopped_replica_left_pending() -> None:
    async with migrated_schema() as url:
        fast = f"{url}&lease_seconds=0.3"
        dying = PostgresStore(fast, serving=True, upstream_timeout=0.2)
        living = PostgresStore(fast, serving=True, upstream_timeout=0.2)
        await dying.open()
        await living.open()
        try:
            await living.insert_key(key())
            await living.reserve(Reservation("mine", "vk_1", DAY, 1_000_000), NOW)
            await dying.reserve(Reservation("theirs", "vk_1", DAY, 2_000_000), NOW)
            await dying.close()  # stops renewing its leases, as a killed replica does
            # The living replica's own reservation is renewed while in flight; the dead
            # one's is resolved once its lease and the vendor timeout have passed.
            for _ in range(50):
                if (await living.spend("vk_1", DAY)).unconfirmed:
                    break
                await asyncio.sleep(0.1)
            assert await living.spend("vk_1", DAY) == SpendState(2_000_000, 1_000_000, 2_000_000)
            states = {e.id: e.state for e in await living.ledger("vk_1")}
            assert states == {"mine": "pending", "theirs": "settled"}
            assert await living.settle("mine", Settlement(900_000), NOW)
            assert await living.spend("vk_1", DAY) == SpendState(2_900_000, 0, 2_000_000)
        finally:
            await living.close()
            await dying.close()


@pytest.mark.postgres
async def test_postgres_settlements_acknowledged_survive_a_database_crash() -> None:
    """Every settlement the store acknowledged is there after an immediate stop (a crash of
    PostgreSQL: no checkpoint, WAL buffers not flushed)."""
    with private_postgres() as cluster:
        async with migrated_schema(cluster.url) as url:
            store = PostgresStore(url)
            await store.open()
            try:
                await store.insert_key(key())
                ids = [f"r{i}" for i in range(40)]
                for rid in ids:
                    await store.reserve(Reservation(rid, "vk_1", DAY, 1000), NOW)
                for rid in ids:
                    assert await store.settle(rid, Settlement(900), NOW)
                await asyncio.to_thread(cluster.stop, "immediate")
            finally:
                await store.close()
            await asyncio.to_thread(cluster.start)
            store = PostgresStore(url)
            await store.open()
            try:
                states = [e.state for e in await store.ledger("vk_1")]
                assert states == ["settled"] * 40
                assert await store.spend("vk_1", DAY) == SpendState(36_000, 0)
            finally:
                await store.close()
