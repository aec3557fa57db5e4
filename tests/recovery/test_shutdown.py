"""Stopping ``keybrake serve``: what a second signal does, and how long a vendor may take."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from keybrake.server.app import generate_admin_token
from tests.test_cli import free_port
from tests.test_cli_operations import clean_env


@asynccontextmanager
async def slow_vendor(delay: float) -> AsyncIterator[str]:
    """A Stripe stand-in that answers every request after ``delay`` seconds."""

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"id": "pi_slow", "amount": 100, "currency": "usd"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve(
    tmp_path: Path, vendor: str, *options: str, **env: str
) -> AsyncIterator[tuple[str, str, subprocess.Popen[str], Path]]:
    """``keybrake serve`` as an operator runs it; yields URL, master token, process, log."""
    port, token, log = free_port(), generate_admin_token(), tmp_path / "serve.log"
    command = [
        sys.executable,
        "-m",
        "keybrake.cli",
        "serve",
        "--port",
        str(port),
        "--database",
        f"sqlite:///{tmp_path / 'kb.db'}",
        *options,
    ]
    environ = clean_env(
        KEYBRAKE_ADMIN_TOKEN=token,
        KEYBRAKE_STRIPE_SECRET_KEY="sk_test_x",
        KEYBRAKE_STRIPE_API_BASE=vendor,
        **env,
    )
    proc = await asyncio.to_thread(_start, command, environ, log)
    assert proc.stdout is not None
    try:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith("keybrake serving on"), line
        yield f"http://127.0.0.1:{port}", token, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, 15)
        proc.stdout.close()


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as err:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)


async def issue(http: aiohttp.ClientSession, url: str, token: str) -> str:
    async with http.post(
        f"{url}/v1/keys",
        json={
            "vendor": "stripe",
            "allowed_endpoints": ["/v1/**"],
            "daily_usd_cap": 100,
            "expires_in": "5m",
        },
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 201
        data: dict[str, Any] = await response.json()
        return str(data["token"])


async def charge(http: aiohttp.ClientSession, url: str, vault_token: str) -> tuple[int, Any]:
    async with http.post(
        f"{url}/stripe/v1/payment_intents",
        data={"amount": "100", "currency": "usd"},
        headers={"Authorization": f"Bearer {vault_token}"},
    ) as response:
        return response.status, await response.json()


async def test_a_second_sigterm_does_not_cut_the_shutdown_short(tmp_path: Path) -> None:
    async with (
        slow_vendor(1.5) as vendor,
        serve(tmp_path, vendor, "--log-level", "info") as (url, token, proc, log),
        aiohttp.ClientSession() as http,
    ):
        vault_token = await issue(http, url, token)
        in_flight = asyncio.ensure_future(charge(http, url, vault_token))
        await asyncio.sleep(0.5)  # the request is at the vendor now
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        status, _ = await in_flight
        assert status == 200  # the request in flight was answered
        assert await asyncio.to_thread(proc.wait, 15) == 0
    assert "already shutting down" in log.read_text()


async def test_the_vendor_timeout_is_the_operators(tmp_path: Path) -> None:
    async with (
        slow_vendor(3) as vendor,
        serve(tmp_path, vendor, "--upstream-timeout", "0.5") as (url, token, _, _),
        aiohttp.ClientSession() as http,
    ):
        status, body = await charge(http, url, await issue(http, url, token))
    assert (status, body["code"]) == (504, "upstream_timeout")
    async with (
        slow_vendor(3) as vendor,
        serve(tmp_path, vendor, KEYBRAKE_UPSTREAM_TIMEOUT="0.5") as (url, token, _, _),
        aiohttp.ClientSession() as http,
    ):
        status, body = await charge(http, url, await issue(http, url, token))
    assert (status, body["code"]) == (504, "upstream_timeout")


async def test_a_bad_vendor_timeout_stops_the_start(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "keybrake.cli", "serve", "--upstream-timeout", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "upstream_timeout" in result.stderr
