"""``/healthz`` answers 503 while the store refuses writes, and 200 again once it takes them."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from keybrake.server import running_server
from keybrake.server.stores.base import AuditEntry, StoreUnavailable
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.conftest import make_config
from tests.recorder import Proxy, Recorder


async def health(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
        return response.status, await response.json()


async def pay(url: str, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/stripe/v1/payment_intents",
            data={"amount": "100", "currency": "usd"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        await response.read()
        return response.status


async def healthy_again(url: str) -> tuple[int, dict[str, Any]]:
    """Poll ``/healthz`` for up to 10 s (the ledger and the audit writer retry on their own)."""
    for _ in range(100):
        status, body = await health(url)
        if status == 200:
            break
        await asyncio.sleep(0.1)
    return status, body


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, to fill up: needs Linux and the right to mount (root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if sys.platform != "linux":
        pytest.skip("mounts a tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write zeros into ``disk`` until it is full."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (65536, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    with pytest.raises(OSError, match="No space left") as full:
        (disk / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


async def test_healthz_says_unhealthy_while_the_disk_is_full(
    small_disk: Path, recorder: Recorder
) -> None:
    config = make_config(small_disk / "kb.db", recorder.url)
    async with running_server(config) as url:
        assert config.admin_token is not None
        key = await Proxy(url, config.admin_token).issue(daily_usd_cap="1000")
        assert await pay(url, key["token"]) == 200
        assert await health(url) == (200, {"status": "ok"})

        filler = fill(small_disk)
        # The WAL may still have room for a few transactions; the next one that needs a new
        # page fails closed.
        for _ in range(500):
            if await pay(url, key["token"]) == 503:
                break
        else:
            raise AssertionError("no request failed on a full disk")
        status, body = await health(url)
        assert status == 503
        assert body["status"] == "unhealthy"
        assert body["code"] == "store_unavailable"
        assert "database or disk is full" in body["reason"], body

        filler.unlink()
        assert await healthy_again(url) == (200, {"status": "ok"})
        assert await pay(url, key["token"]) == 200


class BreakableStore(SQLiteStore):
    """A real store whose writes can be made to fail (a disk full, where none can be had)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, serving=True)
        self.broken = False

    def apply_ledger_ops(self, ops: Any) -> list[Any]:
        if self.broken:
            raise StoreUnavailable("SQLite error: database or disk is full")
        result: list[Any] = super().apply_ledger_ops(ops)
        return result

    async def write_audit(self, entries: list[AuditEntry]) -> None:
        if self.broken:
            raise StoreUnavailable("SQLite error: database or disk is full")
        await super().write_audit(entries)


@pytest.fixture
async def breakable(
    tmp_path: Path, recorder: Recorder
) -> AsyncIterator[tuple[str, Proxy, BreakableStore]]:
    store = BreakableStore(tmp_path / "kb.db")
    config = make_config(tmp_path / "kb.db", recorder.url)
    async with running_server(config, store=store) as url:
        assert config.admin_token is not None
        yield url, Proxy(url, config.admin_token), store


async def test_healthz_says_unhealthy_while_settlements_cant_be_written(
    breakable: tuple[str, Proxy, BreakableStore],
) -> None:
    url, proxy, store = breakable
    key = await proxy.issue(daily_usd_cap="1000")
    assert await pay(url, key["token"]) == 200
    assert await health(url) == (200, {"status": "ok"})

    store.broken = True
    assert await pay(url, key["token"]) == 503  # its reservation can't be written
    status, body = await health(url)
    assert (status, body["status"], body["code"]) == (503, "unhealthy", "store_unavailable")
    assert body["reason"].startswith(
        "the ledger can't write to the store (SQLite error: database or disk is full);"
    ), body

    store.broken = False
    assert await healthy_again(url) == (200, {"status": "ok"})


async def test_healthz_says_unhealthy_while_the_audit_log_cant_be_written(
    breakable: tuple[str, Proxy, BreakableStore],
) -> None:
    url, proxy, store = breakable
    key = await proxy.issue(allowed_endpoints=["/v1/payment_intents"])
    store.broken = True
    # A refusal settles nothing: only the audit writer writes its entry, and fails.
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{url}/stripe/v1/customers", headers={"Authorization": f"Bearer {key['token']}"}
        ) as response,
    ):
        assert response.status == 403
    for _ in range(50):
        status, body = await health(url)
        if status == 503:
            break
        await asyncio.sleep(0.1)
    assert (status, body["status"]) == (503, "unhealthy")
    assert body["reason"] == (
        "the audit log can't write to the store (SQLite error: database or disk is full)"
    )

    store.broken = False
    assert await healthy_again(url) == (200, {"status": "ok"})
