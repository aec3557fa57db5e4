"""The spend ledger under concurrency, cancellation, timeouts and revocation."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
import pytest

from keybrake.server import running_server
from keybrake.server.stores.base import LedgerEntry
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.conftest import TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, RunningServer, make_config
from tests.recorder import Proxy, Recorder, raw_request


async def ledger_of(db_path: Path, key_id: str) -> list[LedgerEntry]:
    store = SQLiteStore(db_path)
    await store.open()
    try:
        return await store.ledger(key_id)
    finally:
        await store.close()


async def issue(server: RunningServer, cap: str, vendor: str = "stripe") -> dict[str, str]:
    async with server.client() as kb:
        issued = await kb.issue_key(vendor, ["/v1/**"], cap=cap, ttl="5m")
    return {"id": issued.id, "token": issued.token}


async def test_200_concurrent_requests_race_the_last_dollars(server: RunningServer) -> None:
    key = await issue(server, cap="50")
    auth = {"Authorization": f"Bearer {key['token']}"}
    url = f"{server.url}/stripe/v1/payment_intents"

    async def pay(http: aiohttp.ClientSession, cents: int) -> int:
        async with http.post(
            url, data={"amount": str(cents), "currency": "usd"}, headers=auth
        ) as response:
            await response.read()
            return response.status

    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:
        assert await pay(http, 4500) == 200  # $45 of $50 spent: $5 left
        statuses = await asyncio.gather(*(pay(http, 50) for _ in range(200)))
    assert statuses.count(200) == 10  # exactly as many $0.50 requests as fit in $5
    assert statuses.count(429) == 190
    entries = await ledger_of(server.db_path, key["id"])
    assert all(e.state == "settled" for e in entries)
    assert sum(e.settled_amount or 0 for e in entries) == 50_000_000
    async with server.client() as kb:
        assert str((await kb.get_key(key["id"])).spent_today_usd) == "50.00"


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_abandoned_requests_leave_no_pending_reservation(
    tmp_path: Path, recorder: Recorder, handler_cancellation: bool
) -> None:
    config = make_config(tmp_path / "kb.db", recorder.url, upstream_timeout=5.0)
    async with running_server(config, handler_cancellation=handler_cancellation) as url:
        assert config.admin_token is not None
        proxy = Proxy(url, config.admin_token)
        key = await proxy.issue(daily_usd_cap="3")
        recorder.delay = 0.5
        recorder.status = 402  # the vendor will refuse these
        timeout = aiohttp.ClientTimeout(total=0.1)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for _ in range(3):
                with pytest.raises(asyncio.TimeoutError):
                    async with http.post(
                        f"{url}/stripe/v1/payment_intents",
                        data={"amount": "100", "currency": "usd"},
                        headers={"Authorization": f"Bearer {key['token']}"},
                    ) as response:
                        await response.read()
        # Let the abandoned handlers finish (or unwind): each has its upstream answer 0.5 s
        # after it started.
        for _ in range(100):
            await asyncio.sleep(0.1)
            entries = await ledger_of(tmp_path / "kb.db", key["id"])
            if len(entries) == 3 and all(e.state != "pending" for e in entries):
                break
        assert len(entries) == 3
        assert not [e for e in entries if e.state == "pending"]
        # Cancelled mid-flight, a request may have reached the vendor: kept counted. Left
        # to finish, it is released, because the vendor refused it.
        expected = "settled" if handler_cancellation else "released"
        assert {e.state for e in entries} == {expected}
        recorder.delay, recorder.status = 0.0, 200
        status, _ = await raw_request(
            url,
            "POST",
            "/stripe/v1/payment_intents",
            token=key["token"],
            body=b"amount=300&currency=usd"
            if not handler_cancellation
            else b"amount=1&currency=usd",
        )
        assert status == (200 if not handler_cancellation else 429)


async def test_upstream_timeout_is_504_and_stays_counted(
    proxy: Proxy, recorder: Recorder, tmp_path: Path
) -> None:
    key = await proxy.issue(daily_usd_cap="2")
    recorder.delay = 1.5  # the proxy's upstream timeout is 1 s
    status, body = await raw_request(
        proxy.url,
        "POST",
        "/stripe/v1/payment_intents",
        token=key["token"],
        body=b"amount=100&currency=usd",
    )
    assert (status, body["code"]) == (504, "upstream_timeout")
    assert await proxy.spend(key["id"]) == "1.00"  # it may have been charged: count it
    entries = await ledger_of(tmp_path / "kb.db", key["id"])
    assert [e.state for e in entries] == ["settled"]


@pytest.mark.parametrize(("status", "spent"), [(402, "0.00"), (500, "1.00"), (201, "1.00")])
async def test_vendor_answers_decide_what_is_counted(
    proxy: Proxy, recorder: Recorder, status: int, spent: str
) -> None:
    key = await proxy.issue()
    recorder.status = status
    got, _ = await raw_request(
        proxy.url,
        "POST",
        "/stripe/v1/payment_intents",
        token=key["token"],
        body=b"amount=100&currency=usd",
    )
    assert got == status
    assert await proxy.spend(key["id"]) == spent


async def test_requests_after_a_revoke_are_401(server: RunningServer) -> None:
    key = await issue(server, cap="1000")
    auth = {"Authorization": f"Bearer {key['token']}"}
    revoked_at: list[float] = []
    results: list[tuple[float, int]] = []

    async def loop(http: aiohttp.ClientSession) -> None:
        for _ in range(40):
            started = time.monotonic()
            async with http.get(
                f"{server.url}/stripe/v1/payment_intents/pi_none", headers=auth
            ) as response:
                await response.read()
                results.append((started, response.status))

    async def revoke() -> None:
        await asyncio.sleep(0.05)
        async with server.client() as kb:
            await kb.revoke_key(key["id"])
        revoked_at.append(time.monotonic())

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(revoke(), *(loop(http) for _ in range(10)))
    after = [status for started, status in results if started > revoked_at[0]]
    assert after, "some requests should start after the revoke"
    assert set(after) == {401}
    assert any(status != 401 for _, status in results), "some requests ran before it"


async def test_twilio_calls_are_cut_and_the_account_pinned(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue(vendor="twilio", allowed_endpoints=["/2010-04-01/**"])
    recorder.answer = {"sid": "CA1", "price": None, "price_unit": "USD"}
    recorder.status = 201
    other_account = "AC" + "9" * 32
    status, _ = await raw_request(
        proxy.url,
        "POST",
        f"/twilio/2010-04-01/Accounts/{other_account}/Calls.json",
        token=key["token"],
        body=b"To=%2B15005550006&From=%2B15005550001&Url=http%3A%2F%2Fexample.com%2Fx&TimeLimit=99999",
    )
    assert status == 201
    [(_, path, headers, body)] = recorder.requests
    assert path == f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Calls.json"
    assert dict(parse_qsl(body.decode()))["TimeLimit"] == "600"  # ten minutes at most
    expected = base64.b64encode(f"{TWILIO_ACCOUNT_SID}:{TWILIO_AUTH_TOKEN}".encode()).decode()
    assert headers["Authorization"] == f"Basic {expected}"
    assert await proxy.spend(key["id"]) == "0.14"  # 10 minutes at $0.014 to +1


async def test_late_twilio_price_corrects_the_estimate(
    proxy: Proxy, recorder: Recorder, tmp_path: Path
) -> None:
    key = await proxy.issue(vendor="twilio", allowed_endpoints=["/2010-04-01/**"])
    messages = f"/twilio/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages"
    recorder.answer = {"sid": "SM1", "price": None, "price_unit": None}
    recorder.status = 201
    body = ("To=%2B447700900000&From=%2B15005550001&Body=" + "x" * 200).encode()
    status, _ = await raw_request(
        proxy.url, "POST", f"{messages}.json", token=key["token"], body=body
    )
    assert status == 201
    assert await proxy.spend(key["id"]) == "0.1048"  # 2 segments to +44 at $0.0524
    recorder.answer = {"sid": "SM1", "price": "-0.09000", "price_unit": "USD"}
    recorder.status = 200
    status, _ = await raw_request(proxy.url, "GET", f"{messages}/SM1.json", token=key["token"])
    assert status == 200
    assert await proxy.spend(key["id"]) == "0.09"
    [entry] = await ledger_of(tmp_path / "kb.db", key["id"])
    assert (entry.final, entry.settled_amount, entry.amount) == (True, 90_000, 104_800)


async def test_stripe_lookups_bound_updates_and_refunds(
    proxy: Proxy, recorder: Recorder, tmp_path: Path
) -> None:
    key = await proxy.issue(daily_usd_cap="1000")
    recorder.answer = {"id": "pi_1", "currency": "eur", "amount": 500}
    status, _ = await raw_request(
        proxy.url,
        "POST",
        "/stripe/v1/payment_intents/pi_1",
        token=key["token"],
        body=b"amount=1000",
    )
    assert status == 200
    recorder.answer = {"id": "ch_1", "currency": "usd", "amount": 5000, "amount_refunded": 1000}
    status, _ = await raw_request(
        proxy.url, "POST", "/stripe/v1/refunds", token=key["token"], body=b"charge=ch_1"
    )
    assert status == 200
    lookups = [(m, p) for m, p, _, _ in recorder.requests if m == "GET"]
    assert lookups == [("GET", "/v1/payment_intents/pi_1"), ("GET", "/v1/charges/ch_1")]
    entries = await ledger_of(tmp_path / "kb.db", key["id"])
    # 10 EUR at the 1.20 bound; the refund bounded by the $40 left to refund.
    assert [e.amount for e in entries] == [12_000_000, 40_000_000]


async def test_settled_spend_comes_from_the_vendor_answer(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    recorder.answer = {"id": "pi_1", "object": "payment_intent", "amount": 100, "currency": "jpy"}
    status, _ = await raw_request(
        proxy.url,
        "POST",
        "/stripe/v1/payment_intents",
        token=key["token"],
        body=b"amount=100&currency=jpy",
    )
    assert status == 200
    assert await proxy.spend(key["id"]) == "0.80"  # 100 JPY (zero-decimal) at $0.008


async def test_a_lookup_the_vendor_cannot_answer_is_502(proxy: Proxy, recorder: Recorder) -> None:
    key = await proxy.issue()
    recorder.status = 503
    status, body = await raw_request(
        proxy.url, "POST", "/stripe/v1/refunds", token=key["token"], body=b"charge=ch_1"
    )
    assert (status, body["code"]) == (502, "upstream_unavailable")
    assert [m for m, _, _, _ in recorder.requests] == ["GET"]  # the refund was not sent
