"""kill -9 at random moments under concurrent priced load, on SQLite and on PostgreSQL
replicas, and an immediate stop of the database itself.

What may happen: requests in flight fail (the client sees a dropped connection or a 503).
What may not: spend counted below what the vendor really received, spend past the cap, a
reservation left pending after recovery, or a request counted as confirmed that the vendor
never received. Each case checks these against the recording vendor's own count.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.pg import migrated_schema, private_postgres
from tests.recovery.harness import (
    PRICE_MICROS,
    Load,
    issue,
    key_view,
    micros,
    recording_vendor,
    serving,
)

#: Large enough that the load never reaches it: requests are in flight when the kill lands.
CAP = 100_000


def assert_counted(view: dict[str, object], received: int, *, cap: int = CAP) -> None:
    spent = micros(str(view["spent_today_usd"]))
    unconfirmed = micros(str(view["unconfirmed_today_usd"]))
    reserved = micros(str(view["reserved_today_usd"]))
    assert reserved == 0, "a reservation was left pending"
    # Never too little: every request the vendor received is counted...
    assert spent >= received * PRICE_MICROS
    # ...and what is counted as confirmed, the vendor really received.
    assert spent - unconfirmed <= received * PRICE_MICROS
    assert spent <= cap * 1_000_000


async def test_sqlite_survives_kill_9_under_load(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'kb.db'}"
    async with recording_vendor() as vendor:
        key_id = token = ""
        for _ in range(3):
            async with serving(database, vendor) as (url, proc):
                if not key_id:
                    key_id, token = await issue(url, CAP)
                load = Load()
                running = asyncio.ensure_future(load.run([url], token))
                await asyncio.sleep(random.uniform(0.2, 0.8))
                proc.kill()  # SIGKILL: no shutdown, no flush
                await asyncio.to_thread(proc.wait, 15)
                load.stop.set()
                await running
                assert load.statuses.get(500, 0) == 0
        # A server on the same file resolves what the dead ones left pending.
        async with serving(database, vendor) as (url, _):
            view = await key_view(url, key_id)
    assert vendor.received > 0, "the load reached the vendor"
    assert_counted(view, vendor.received)


@pytest.mark.postgres
async def test_postgres_replicas_survive_one_being_killed(tmp_path: Path) -> None:
    async with migrated_schema() as base, recording_vendor() as vendor:
        database = f"{base}&lease_seconds=0.5"
        async with (
            serving(database, vendor, "--upstream-timeout", "1") as (first, doomed),
            serving(database, vendor, "--upstream-timeout", "1") as (second, _),
        ):
            key_id, token = await issue(first, CAP)
            load = Load()
            running = asyncio.ensure_future(load.run([first, second], token))
            await asyncio.sleep(random.uniform(0.3, 0.8))
            doomed.kill()
            await asyncio.to_thread(doomed.wait, 15)
            await asyncio.sleep(0.3)
            load.stop.set()
            await running
            # The survivor resolves the dead replica's reservations once their lease and the
            # vendor timeout have passed.
            for _ in range(60):
                view = await key_view(second, key_id)
                if micros(str(view["reserved_today_usd"])) == 0:
                    break
                await asyncio.sleep(0.1)
            assert load.statuses.get(500, 0) == 0
    assert vendor.received > 0
    assert_counted(view, vendor.received)


@pytest.mark.postgres
async def test_postgres_stopped_at_once_under_load(tmp_path: Path) -> None:
    with private_postgres() as cluster:
        async with migrated_schema(cluster.url) as base, recording_vendor() as vendor:
            database = f"{base}&lease_seconds=0.5"
            async with serving(database, vendor, "--upstream-timeout", "1") as (url, _):
                key_id, token = await issue(url, CAP)
                load = Load()
                running = asyncio.ensure_future(load.run([url], token))
                await asyncio.sleep(random.uniform(0.3, 0.8))
                await asyncio.to_thread(cluster.stop, "immediate")  # a crash of the database
                await asyncio.sleep(0.5)
                await asyncio.to_thread(cluster.start)
                await asyncio.sleep(1.0)
                load.stop.set()
                await running
                for _ in range(60):
                    view = await key_view(url, key_id)
                    if micros(str(view["reserved_today_usd"])) == 0:
                        break
                    await asyncio.sleep(0.1)
                assert load.statuses.get(500, 0) == 0
                assert load.statuses.get(503, 0) > 0, "requests failed closed while it was down"
    assert vendor.received > 0
    assert_counted(view, vendor.received)
