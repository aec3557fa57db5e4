"""Several ``keybrake serve`` replicas on one PostgreSQL: one truth for keys and spend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest

from keybrake import Keybrake
from keybrake.server.stores.postgres.store import PostgresStore
from tests.pg import migrated_schema, private_postgres
from tests.recorder import Recorder
from tests.server.test_brakes import PRICING, race_in_one_budget
from tests.test_cli import free_port

pytestmark = pytest.mark.postgres

ADMIN = "kb_admin_replicas"


@contextlib.contextmanager
def replicas(
    database_url: str, stripe_url: str, count: int, *, more_env: Mapping[str, str] | None = None
) -> Iterator[list[str]]:
    """``count`` server processes on their own ports, all on one database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    env.update(
        KEYBRAKE_DATABASE_URL=database_url,
        KEYBRAKE_ADMIN_TOKEN=ADMIN,
        KEYBRAKE_STRIPE_SECRET_KEY="sk_test_replicas",
        KEYBRAKE_STRIPE_API_BASE=stripe_url,
        **(more_env or {}),
    )
    procs, urls = [], []
    try:
        for _ in range(count):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "keybrake.cli",
                        "serve",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("keybrake serving on"), line
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()  # a replica that ignores SIGTERM must not outlive the test
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def pay(
    http: aiohttp.ClientSession, url: str, token: str, cents: int = 100
) -> tuple[int, str | None]:
    async with http.post(
        f"{url}/stripe/v1/payment_intents",
        data={"amount": str(cents), "currency": "usd"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body.get("code") if isinstance(body, dict) else None


async def ledger(url: str, key_id: str) -> tuple[list[str], int, int, int]:
    store = PostgresStore(url)
    await store.open()
    try:
        entries = await store.ledger(key_id)
        days = {e.day for e in entries}
        spent = reserved = 0
        for day in days:
            state = await store.spend(key_id, day)
            spent, reserved = spent + state.spent, reserved + state.reserved
        settled = sum(e.settled_amount or 0 for e in entries if e.state == "settled")
        return [e.state for e in entries], spent, reserved, settled
    finally:
        await store.close()


async def test_400_requests_over_4_replicas_never_pass_the_cap(localstripe_url: str) -> None:
    async with migrated_schema() as database:
        with replicas(database, localstripe_url, 4) as urls:
            async with Keybrake(ADMIN, api_url=urls[0], proxy_url=urls[0]) as kb:
                issued = await kb.issue_key("stripe", ["/v1/payment_intents"], cap=50, ttl="5m")
            connector = aiohttp.TCPConnector(limit=400)
            async with aiohttp.ClientSession(connector=connector) as http:
                results = await asyncio.gather(
                    *(pay(http, urls[i % 4], issued.token) for i in range(400))
                )
            statuses = [status for status, _ in results]
            assert statuses.count(200) == 50
            assert statuses.count(429) == 350
        states, spent, reserved, settled = await ledger(database, issued.id)
    assert set(states) == {"settled"}
    assert (spent, reserved, settled) == (50_000_000, 0, 50_000_000)


async def test_a_revoke_on_one_replica_holds_on_the_next_request_to_another(
    localstripe_url: str,
) -> None:
    async with migrated_schema() as database:
        with replicas(database, localstripe_url, 2) as (a, b):
            async with Keybrake(ADMIN, api_url=a, proxy_url=a) as kb:
                issued = await kb.issue_key("stripe", ["/v1/payment_intents"], cap=100, ttl="5m")
                async with aiohttp.ClientSession() as http:
                    assert (await pay(http, b, issued.token))[0] == 200
                    await kb.revoke_key(issued.id)  # through replica A
                    assert await pay(http, b, issued.token) == (401, "key_revoked")


async def test_a_bulk_revoke_on_one_replica_holds_on_the_next_request_to_another(
    localstripe_url: str,
) -> None:
    async with migrated_schema() as database:
        with replicas(database, localstripe_url, 2) as (a, b):
            async with Keybrake(ADMIN, api_url=a, proxy_url=a) as kb:
                run = [
                    await kb.issue_key(
                        "stripe", ["/v1/payment_intents"], cap=100, ttl="5m", label=f"run-9-{i}"
                    )
                    for i in range(3)
                ]
                spared = await kb.issue_key(
                    "stripe", ["/v1/payment_intents"], cap=100, ttl="5m", label="run-10"
                )
                async with aiohttp.ClientSession() as http:
                    for key in (*run, spared):
                        assert (await pay(http, b, key.token))[0] == 200
                    revoked = await kb.revoke_keys(label_prefix="run-9-")  # through replica A
                    assert revoked == sorted(key.id for key in run)
                    for key in run:
                        assert await pay(http, b, key.token) == (401, "key_revoked")
                        assert await pay(http, a, key.token) == (401, "key_revoked")
                    assert (await pay(http, b, spared.token))[0] == 200


async def test_postgres_restart_fails_closed_then_recovers(localstripe_url: str) -> None:
    with private_postgres() as cluster:
        async with migrated_schema(cluster.url) as database:
            with replicas(database, localstripe_url, 2) as urls:
                async with Keybrake(ADMIN, api_url=urls[0], proxy_url=urls[0]) as kb:
                    issued = await kb.issue_key(
                        "stripe", ["/v1/payment_intents"], cap=1_000_000, ttl="10m"
                    )
                seen: list[tuple[float, int, str | None]] = []
                stop = asyncio.Event()

                async def load(url: str) -> None:
                    async with aiohttp.ClientSession() as http:
                        while not stop.is_set():
                            try:
                                status, code = await pay(http, url, issued.token)
                            except aiohttp.ClientError:
                                status, code = 0, "client_error"
                            seen.append((time.monotonic(), status, code))
                            await asyncio.sleep(0.01)

                workers = [asyncio.create_task(load(url)) for url in urls for _ in range(3)]
                await asyncio.sleep(1.0)
                down_at = time.monotonic()
                await asyncio.to_thread(cluster.stop)
                await asyncio.sleep(1.5)
                await asyncio.to_thread(cluster.start)
                up_at = time.monotonic()
                await asyncio.sleep(3.0)
                stop.set()
                await asyncio.gather(*workers)
                await asyncio.sleep(1.0)  # let the replicas retry what they owe
                # While down: 503 store_unavailable (fail closed), never a 500.
                during = [(s, c) for t, s, c in seen if down_at + 0.3 < t < up_at - 0.1]
                after = [s for t, s, _ in seen if t > up_at + 2.0]
            assert during, "some requests were made while PostgreSQL was down"
            assert {s for s, _ in during} == {503}
            assert {c for _, c in during} == {"store_unavailable"}
            assert [(s, c) for _, s, c in seen if s == 500] == []
            assert after, "requests went on after the restart"
            assert set(after) == {200}
            states, spent, reserved, settled = await ledger(database, issued.id)
    assert "pending" not in states
    assert reserved == 0
    assert spent == settled
    ok = sum(1 for _, s, _ in seen if s == 200)
    assert settled >= ok * 1_000_000  # every success counted; unknowns counted, never lost


async def test_brakes_hold_exactly_across_3_replicas(tmp_path: Path, recorder: Recorder) -> None:
    """One budget over two vendors, a use count and a rate limit, each raced over three
    replicas: the store admits exactly what the brakes allow."""
    pricing = tmp_path / "pricing.json"
    pricing.write_text(json.dumps(PRICING))
    more_env = {
        "KEYBRAKE_RESEND_API_KEY": "re_upstream",
        "KEYBRAKE_RESEND_API_BASE": recorder.url,
        "KEYBRAKE_PRICING_FILE": str(pricing),
    }
    async with migrated_schema() as database:
        with replicas(database, recorder.url, 3, more_env=more_env) as urls:
            async with Keybrake(ADMIN, api_url=urls[0], proxy_url=urls[0]) as kb:
                _, statuses = await race_in_one_budget(urls[0], kb, *urls)
                assert sorted(statuses) == [200] * 10 + [429] * 30
                assert len(recorder.requests) == 10
                for brakes, allowed in (({"max_requests": 7}, 7), ({"rate_limit": "5/m"}, 5)):
                    recorder.requests.clear()
                    issued = await kb.issue_key(
                        "stripe", ["/v1/customers/*"], cap=1, ttl="5m", **brakes
                    )
                    async with aiohttp.ClientSession() as http:
                        results = await asyncio.gather(
                            *(free(http, urls[i % 3], issued.token) for i in range(30))
                        )
                    assert results.count(200) == allowed, brakes
                    assert len(recorder.requests) == allowed
                    assert (await kb.get_key(issued.id)).requests_used == allowed


async def free(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(
        f"{url}/stripe/v1/customers/cus_1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        await response.read()
        return response.status
