"""The audit log's own promises, against a real SQLite store in a temporary file."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keybrake.server.ledger import audit
from keybrake.server.ledger.audit import AuditLog
from keybrake.server.stores.base import AuditEntry
from keybrake.server.stores.sqlite.store import SQLiteStore


def entry(n: int, *, path: str | None = None, label: str | None = "run") -> AuditEntry:
    return AuditEntry(
        at=1_800_000_000_000_000 + n,
        tenant="team-a",
        key_id="vk_audit",
        label=label,
        vendor="stripe",
        method="POST",
        path=f"/v1/payment_intents/{n}" if path is None else path,
        decision="allowed",
        status=200,
        reserved=100,
        settled=100,
        upstream_ms=1.5,
        vendor_request_id=f"req_{n}",
    )


def stored(db: Path) -> list[tuple[str, str | None]]:
    """Every row the store holds, oldest first, read with a connection of our own."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path, label FROM audit ORDER BY id").fetchall()
    conn.close()
    return [(str(path), label) for path, label in rows]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    the_store = SQLiteStore(tmp_path / "audit.db")
    await the_store.open()
    try:
        yield the_store
    finally:
        await the_store.close()


async def test_a_clean_shutdown_loses_nothing(store: SQLiteStore) -> None:
    log = AuditLog(store)
    log.start()
    for n in range(5_000):
        log.record(entry(n))
        if n % 250 == 0:
            await asyncio.sleep(0)  # let the background writer take some batches meanwhile
    await log.close()

    rows = stored(Path(store.path))
    assert len(rows) == 5_000
    assert [path for path, _ in rows] == [f"/v1/payment_intents/{n}" for n in range(5_000)]
    assert log.dropped == 0


async def test_token_like_strings_never_reach_the_store(store: SQLiteStore) -> None:
    vault_key = "vault_key_Zq8-s3cr3t_Tail"
    master = "kb_admin_Mx0-an0ther_s3cr3t"
    log = AuditLog(store)
    log.start()
    log.record(entry(1, path=f"/v1/customers/{vault_key}", label=f"pasted {master} here"))
    log.record(entry(2, path=f"/v1/x/{master}/y", label=None))
    await log.close()

    assert stored(Path(store.path)) == [
        ("/v1/customers/vault_key_***", "pasted kb_admin_*** here"),
        ("/v1/x/kb_admin_***/y", None),
    ]
    await store.close()  # the last connection folds the WAL back into the file
    raw = b"".join(p.read_bytes() for p in Path(store.path).parent.glob("audit.db*"))
    assert b"s3cr3t" not in raw


async def test_record_is_synchronous_and_waits_for_a_store_that_is_down(
    store: SQLiteStore,
) -> None:
    assert not inspect.iscoroutinefunction(AuditLog.record)
    await store.close()  # the store is down: every write fails with StoreUnavailable
    log = AuditLog(store)
    log.start()

    started = time.perf_counter()
    for n in range(1_000):
        log.record(entry(n))  # returns at once, whatever the store's state
    assert time.perf_counter() - started < 1.0  # nothing waited for the store

    await asyncio.sleep(0.5)  # the writer tried and failed meanwhile; the entries wait
    await store.open()  # the store is back: the writer catches up on its own
    for _ in range(100):
        if len(stored(Path(store.path))) == 1_000:
            break
        await asyncio.sleep(0.05)
    assert len(stored(Path(store.path))) == 1_000
    await log.close()
    assert len(stored(Path(store.path))) == 1_000


async def test_the_backlog_keeps_the_newest_entries(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit, "MAX_PENDING", 50)
    log = AuditLog(store)  # no writer running: everything stays queued
    with caplog.at_level(logging.WARNING, logger="keybrake.audit"):
        for n in range(120):
            log.record(entry(n))
    assert log.dropped == 70
    assert "dropped" in caplog.text

    await log.close()
    assert [path for path, _ in stored(Path(store.path))] == [
        f"/v1/payment_intents/{n}" for n in range(70, 120)
    ]


async def test_a_store_down_at_shutdown_is_reported_not_raised(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(store)
    log.start()
    await store.close()
    log.record(entry(1))
    with caplog.at_level(logging.ERROR, logger="keybrake.audit"):
        await log.close()
    assert "1 entries could not be written at shutdown" in caplog.text
