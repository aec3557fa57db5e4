"""Real ``keybrake serve`` processes, a vendor that records what reaches it, and priced load:
what the recovery tests kill, stop and starve."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from keybrake.server.app import generate_admin_token
from tests.test_cli import free_port
from tests.test_cli_operations import clean_env

ADMIN = generate_admin_token()
#: What one priced request of the load costs: $1.00.
PRICE_MICROS = 1_000_000


@attrs.define
class Vendor:
    """A Stripe stand-in that records every payment intent it creates, then answers after a
    random pause (so that a kill lands between forwarding and settling)."""

    url: str = ""
    received: int = 0
    max_delay: float = 0.05


@asynccontextmanager
async def recording_vendor(max_delay: float = 0.05) -> AsyncIterator[Vendor]:
    vendor = Vendor(max_delay=max_delay)

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        vendor.received += 1  # the vendor has acted: from here on it is money spent
        await asyncio.sleep(random.uniform(0, vendor.max_delay))
        return web.json_response(
            {
                "id": f"pi_{vendor.received}",
                "object": "payment_intent",
                "amount": 100,
                "currency": "usd",
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    vendor.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield vendor
    finally:
        await runner.cleanup()


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )


@asynccontextmanager
async def serving(
    database: str, vendor: Vendor, *options: str
) -> AsyncIterator[tuple[str, subprocess.Popen[str]]]:
    """One ``keybrake serve`` process on a free port; killed (if alive) on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "keybrake.cli", "serve", "--port", str(port)]
    command += ["--database", database, "--log-level", "warning", *options]
    env = clean_env(
        KEYBRAKE_ADMIN_TOKEN=ADMIN,
        KEYBRAKE_STRIPE_SECRET_KEY="sk_test_recovery",
        KEYBRAKE_STRIPE_API_BASE=vendor.url,
    )
    proc = await asyncio.to_thread(_start, command, env)
    assert proc.stdout is not None
    try:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith("keybrake serving on"), line
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 15)
        proc.stdout.close()


async def issue(url: str, cap: int) -> tuple[str, str]:
    """A Stripe key with a ``cap`` USD daily cap: ``(id, token)``."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/keys",
            json={
                "vendor": "stripe",
                "allowed_endpoints": ["/v1/payment_intents"],
                "daily_usd_cap": cap,
                "expires_in": "1h",
            },
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        data: dict[str, Any] = await response.json()
        return str(data["id"]), str(data["token"])


async def key_view(url: str, key_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{url}/v1/keys/{key_id}", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


@attrs.define
class Load:
    """Priced requests from several workers until stopped; what came back, by status."""

    statuses: dict[int, int] = attrs.field(factory=dict)
    stop: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def run(self, urls: Sequence[str], token: str, workers: int = 8) -> None:
        async def worker(url: str) -> None:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                while not self.stop.is_set():
                    try:
                        async with http.post(
                            f"{url}/stripe/v1/payment_intents",
                            data={"amount": "100", "currency": "usd"},
                            headers={"Authorization": f"Bearer {token}"},
                        ) as response:
                            await response.read()
                            status = response.status
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        status = 0  # the server died under us
                        await asyncio.sleep(0.05)
                    self.statuses[status] = self.statuses.get(status, 0) + 1

        await asyncio.gather(*(worker(urls[i % len(urls)]) for i in range(workers)))


def micros(usd: str) -> int:
    whole, _, frac = usd.partition(".")
    return int(whole) * 1_000_000 + int(frac.ljust(6, "0"))
