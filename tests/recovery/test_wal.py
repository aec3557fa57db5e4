"""The WAL of a busy SQLite store stays bounded, and shrinks once the load stops."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from keybrake.server import running_server
from keybrake.server.stores.sqlite import store
from tests.conftest import make_config
from tests.recorder import Proxy, Recorder

REQUESTS = 3000
CONCURRENCY = 16
TRUNCATE_SIZE = 256 * 1024
SIZE_LIMIT = 512 * 1024


def wal_size(db: Path) -> int:
    try:
        return os.stat(f"{db}-wal").st_size
    except FileNotFoundError:
        return 0


async def test_the_wal_stays_bounded_under_steady_load_and_shrinks_after(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small thresholds so that a few thousand requests show what millions would.
    monkeypatch.setattr(store, "WAL_TRUNCATE_SIZE", TRUNCATE_SIZE)
    monkeypatch.setattr(store, "JOURNAL_SIZE_LIMIT", SIZE_LIMIT)
    monkeypatch.setattr(store, "CHECKPOINT_INTERVAL", 0.02)
    db = tmp_path / "kb.db"
    config = make_config(db, recorder.url)
    async with running_server(config) as url:
        assert config.admin_token is not None
        key = await Proxy(url, config.admin_token).issue(daily_usd_cap="1000")
        sizes: list[int] = []

        async def watch() -> None:
            while True:
                sizes.append(wal_size(db))
                await asyncio.sleep(0.005)

        statuses: list[int] = []
        todo = iter(range(REQUESTS))

        async def client(http: aiohttp.ClientSession) -> None:
            for _ in todo:
                async with http.post(
                    f"{url}/stripe/v1/payment_intents",
                    data={"amount": "1", "currency": "usd"},
                    headers={"Authorization": f"Bearer {key['token']}"},
                ) as response:
                    await response.read()
                    statuses.append(response.status)

        watcher = asyncio.create_task(watch())
        try:
            async with aiohttp.ClientSession() as http:
                await asyncio.gather(*(client(http) for _ in range(CONCURRENCY)))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        # No write failed closed while checkpoints held writers back.
        assert statuses == [200] * REQUESTS
        assert await Proxy(url, config.admin_token).spend(key["id"]) == f"{REQUESTS / 100:.2f}"
        # Grown past the threshold, the WAL was cut back every time, never left to grow.
        peak = max(sizes)
        assert peak < 8 * TRUNCATE_SIZE, f"the WAL reached {peak} bytes"
        # Once the load stops, the next checkpoints start it over: back to nothing.
        for _ in range(100):
            if wal_size(db) == 0:
                break
            await asyncio.sleep(0.02)
        assert wal_size(db) == 0
