"""Retention (CONTRACT §3): old audit entries, finished reservations and spend rows go;
pending reservations, recent rows and keys stay, and every view of the window is unchanged."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import attrs
import pytest

from keybrake.server import running_server
from keybrake.server.config import ServerConfig
from keybrake.server.stores.base import (
    AuditEntry,
    KeyRecord,
    LedgerEntry,
    PruneResult,
    Reservation,
    Settlement,
    SpendState,
    Store,
    UsageRow,
)
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.conftest import make_config
from tests.test_cli_operations import keybrake

DAY = 86_400 * 1_000_000


def micros(day: str, hour: int = 12) -> int:
    moment = datetime.fromisoformat(day).replace(hour=hour, tzinfo=timezone.utc)
    return int(moment.timestamp()) * 1_000_000


#: Everything before 2026-03-01 00:00 UTC is old.
BEFORE = micros("2026-03-01", hour=0)


@pytest.fixture(params=[1000, 2], ids=["chunk1000", "chunk2"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Prune in the default chunks, and in chunks of 2 rows (so a pass takes many)."""
    size: int = request.param
    monkeypatch.setattr("keybrake.server.stores.sqlite.rows.PRUNE_CHUNK", size)
    monkeypatch.setattr("keybrake.server.stores.postgres.store.PRUNE_CHUNK", size)
    return size


def key(key_id: str, created_at: int) -> KeyRecord:
    return KeyRecord(
        id=key_id,
        tenant="default",
        token_hash=f"hash-{key_id}",
        vendor="stripe",
        label=key_id,
        allowed_endpoints=("/v1/**",),
        cap_micros=100_000_000,
        created_at=created_at,
        # Active at every reservation ``fill`` makes with it (reserving checks).
        expires_at=created_at + 3 * DAY,
        max_expires_at=created_at + 3 * DAY,
    )


def entry(at: int, key_id: str = "vk_old") -> AuditEntry:
    return AuditEntry(
        at=at,
        tenant="default",
        key_id=key_id,
        label=key_id,
        vendor="stripe",
        method="POST",
        path="/v1/payment_intents",
        decision="allowed",
        status=200,
    )


async def reserve(store: Store, rsv_id: str, key_id: str, at: int, amount: int) -> Reservation:
    r = Reservation(rsv_id, key_id, time.strftime("%Y-%m-%d", time.gmtime(at // 10**6)), amount)
    await store.reserve(r, at)
    return r


async def fill(store: Store, *, old: int, recent: int) -> None:
    """Two old days and a recent one: settled, released and pending reservations, and
    audit entries on both sides of the cut."""
    await store.insert_key(key("vk_old", old - DAY))
    # Old day 1: one settled, one released; nothing pending, so its spend row goes too.
    for n in range(3):
        r = await reserve(store, f"rsv_a{n}", "vk_old", old + n, 1_000_000)
        await store.settle(r.id, Settlement(900_000), old + n + 10)
    r = await reserve(store, "rsv_b", "vk_old", old + 5, 2_000_000)
    await store.release(r.id, old + 20)
    # Old day 2: one still pending, holding money on its day's row: both stay.
    await reserve(store, "rsv_pending", "vk_old", old + DAY, 3_000_000)
    # Old day 2: reserved long ago but settled inside the window: it stays.
    r = await reserve(store, "rsv_late", "vk_old", old + DAY + 1, 1_000_000)
    await store.settle(r.id, Settlement(500_000), recent)
    # The recent day: settled and released, inside the window.
    await store.insert_key(key("vk_new", recent - 10))
    r = await reserve(store, "rsv_new", "vk_new", recent, 4_000_000)
    await store.settle(r.id, Settlement(3_500_000), recent + 1)
    r = await reserve(store, "rsv_new_released", "vk_new", recent + 2, 1_000_000)
    await store.release(r.id, recent + 3)
    await store.write_audit([entry(old + n) for n in range(5)])
    await store.write_audit([entry(BEFORE - 1), entry(BEFORE, "vk_new"), entry(recent, "vk_new")])


@attrs.frozen
class Views:
    """What the API shows of the keys: usage rows, spend, ledgers, audit."""

    usage: list[UsageRow]
    spend_new: SpendState
    spend_pending_day: SpendState
    ledger_new: list[LedgerEntry]
    audit: list[AuditEntry]


async def views(store: Store) -> Views:
    return Views(
        usage=await store.usage("default", key_id=None, day=None, limit=100, starting_after=None),
        spend_new=await store.spend("vk_new", "2026-03-05"),
        spend_pending_day=await store.spend("vk_old", "2026-01-11"),
        ledger_new=await store.ledger("vk_new"),
        audit=await store.list_audit(
            "default", key_id=None, decision=None, limit=100, starting_after=None
        ),
    )


async def test_prune_deletes_old_finished_rows_and_keeps_the_window(
    store: Store, chunk: int
) -> None:
    old, recent = micros("2026-01-10"), micros("2026-03-05")
    await fill(store, old=old, recent=recent)
    before = await views(store)

    result = await store.prune(BEFORE)

    # 5 + 1 old audit entries; 3 settled and 1 released reservations; old day 1's spend row.
    assert result == PruneResult(audit_entries=6, reservations=4, spend_rows=1)
    after = await views(store)
    # Inside the window nothing changed: usage rows, spend, the ledger, the audit entries.
    assert after.usage == [row for row in before.usage if row.day != "2026-01-10"]
    assert {row.day for row in after.usage} == {"2026-03-05", "2026-01-11"}
    assert after.spend_new == before.spend_new
    assert after.spend_pending_day == before.spend_pending_day
    assert after.ledger_new == before.ledger_new
    assert [e.at for e in after.audit] == [recent, BEFORE]
    # The pending reservation and the one settled late stay; keys stay.
    assert [(e.id, e.state) for e in await store.ledger("vk_old")] == [
        ("rsv_pending", "pending"),
        ("rsv_late", "settled"),
    ]
    assert await store.get_key("default", "vk_old") is not None
    # The pending reservation can still be settled, on the spend row that stayed.
    assert await store.settle("rsv_pending", Settlement(2_000_000), recent)
    spent = await store.spend("vk_old", "2026-01-11")
    assert (spent.spent, spent.reserved) == (2_500_000, 0)
    # The next pass takes that day's row, now that nothing is reserved on it; then nothing.
    assert await store.prune(BEFORE) == PruneResult(spend_rows=1)
    assert await store.prune(BEFORE) == PruneResult()


async def test_prune_of_an_empty_store(store: Store) -> None:
    assert await store.prune(BEFORE) == PruneResult()


def test_retention_days_from_flag_environment_and_default() -> None:
    assert ServerConfig().retention_days == 30
    assert ServerConfig.from_env({"KEYBRAKE_RETENTION_DAYS": "7"}).retention_days == 7
    assert (
        ServerConfig.from_env({"KEYBRAKE_RETENTION_DAYS": "7"}, retention_days=0).retention_days
        == 0
    )
    for bad in ("-1", "1.5", "a week", "40000"):
        with pytest.raises(ValueError, match="retention_days"):
            ServerConfig.from_env({"KEYBRAKE_RETENTION_DAYS": bad})


def now_micros() -> int:
    return time.time_ns() // 1000


def seed_database(path: Path, *, old: int, recent: int) -> None:
    async def seed() -> None:
        store = SQLiteStore(path)
        await store.open()
        try:
            await fill(store, old=old, recent=recent)
        finally:
            await store.close()

    asyncio.run(seed())


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_the_server_prunes_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keybrake.server.ledger.retention.FIRST_PASS_DELAY", 0.0)
    db = tmp_path / "kb.db"
    now = now_micros()
    await asyncio.to_thread(seed_database, db, old=now - 40 * DAY, recent=now - DAY)
    assert count(db, "audit") == 8
    config = make_config(db, "http://127.0.0.1:9", retention_days=30)
    async with running_server(config):
        for _ in range(100):
            if count(db, "audit") < 8:
                break
            await asyncio.sleep(0.05)
        # BEFORE and BEFORE - 1 are long past too: only the recent entry stays.
        assert count(db, "audit") == 1
        assert count(db, "reservations") == 4  # rsv_pending (resolved), rsv_late, vk_new's two


def test_keybrake_prune_deletes_once_and_says_what(tmp_path: Path) -> None:
    db = tmp_path / "kb.db"
    now = now_micros()
    seed_database(db, old=now - 40 * DAY, recent=now - DAY)

    done = keybrake("prune", "--older-than", "30d", "--database", f"sqlite:///{db}")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "deleted 7 audit entries, 4 finished reservations and 1 spend rows older than 30 days"
    )
    assert (count(db, "audit"), count(db, "reservations"), count(db, "spend")) == (1, 4, 2)
    again = keybrake("prune", "--older-than", "30d", "--database", f"sqlite:///{db}")
    assert again.returncode == 0
    assert again.stdout.startswith("deleted 0 audit entries, 0 finished reservations and 0")


@pytest.mark.parametrize("older_than", ["30", "0d", "-3d", "thirty days", "2w"])
def test_keybrake_prune_refuses_a_bad_age(tmp_path: Path, older_than: str) -> None:
    db = tmp_path / "kb.db"
    done = keybrake("prune", f"--older-than={older_than}", "--database", f"sqlite:///{db}")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("keybrake prune: --older-than takes a number of days")
    assert not db.exists()


def test_keybrake_prune_on_an_unknown_store(tmp_path: Path) -> None:
    done = keybrake("prune", "--older-than", "30d", "--database", "mysql://db/kb")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("keybrake prune: unsupported database URL scheme")


def test_keybrake_serve_refuses_a_bad_retention(tmp_path: Path) -> None:
    done = keybrake(
        "serve", "--retention-days", "-2", "--database", f"sqlite:///{tmp_path / 'kb.db'}"
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("keybrake serve: retention_days must be")
