"""Brakes and revocations that land while a request is on its way, on both stores: a key
revoked while its body is still coming sends nothing, and a pricing look-up at the vendor is
itself braked."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from keybrake.server import running_server
from tests.conftest import make_config
from tests.pg import migrated_schema
from tests.recorder import Proxy, Recorder


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_proxy(
    request: pytest.FixtureRequest, tmp_path: Path, recorder: Recorder
) -> AsyncIterator[Proxy]:
    """A keybrake server in front of the recorder, on SQLite or on PostgreSQL."""
    async with contextlib.AsyncExitStack() as stack:
        config = make_config(tmp_path / "kb.db", recorder.url, upstream_timeout=1.0)
        if request.param == "postgres":
            database_url = await stack.enter_async_context(migrated_schema())
            config = attrs.evolve(config, database_url=database_url)
        url = await stack.enter_async_context(running_server(config))
        assert config.admin_token is not None
        yield Proxy(url, config.admin_token)


async def nothing() -> None:
    pass


async def admin(proxy: Proxy, method: str, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, proxy.url + path, headers={"Authorization": f"Bearer {proxy.admin_token}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


async def create_budget(proxy: Proxy) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.url + "/v1/budgets",
            json={"label": "run", "daily_usd_cap": 10, "expires_in": "5m"},
            headers={"Authorization": f"Bearer {proxy.admin_token}"},
        ) as response,
    ):
        assert response.status == 201
        budget_id: str = (await response.json())["id"]
        return budget_id


async def slow_body(
    proxy: Proxy, token: str, path: str, body: bytes, meanwhile: Any
) -> tuple[int, dict[str, Any]]:
    """Send a request's head, run ``meanwhile()`` once the proxy has looked the key up
    (it reads the body only after that), then send the body; the answer."""
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    await asyncio.sleep(0.3)  # the key is looked up as soon as the head has come
    await meanwhile()
    writer.write(body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head_bytes, _, payload = response.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(payload)


PRICED = ("/stripe/v1/payment_intents", b"amount=100&currency=usd")
FREE = ("/stripe/v1/customers", b"name=Ada")


@pytest.mark.parametrize(
    ("brakes", "request_"),
    [
        pytest.param({}, PRICED, id="priced"),
        pytest.param({"max_requests": 5}, PRICED, id="priced-braked"),
        pytest.param({}, FREE, id="free"),
        pytest.param({"rate_limit": "5/s"}, FREE, id="free-braked"),
    ],
)
async def test_a_key_revoked_while_its_body_comes_sends_nothing(
    any_proxy: Proxy, recorder: Recorder, brakes: dict[str, Any], request_: tuple[str, bytes]
) -> None:
    issued = await any_proxy.issue(**brakes)
    # A request first, so that every cache a store keeps has the key.
    path, body = request_
    status, _ = await slow_body(any_proxy, issued["token"], path, body, nothing)
    assert status == 200
    before = len(recorder.requests)

    async def revoke() -> None:
        await admin(any_proxy, "DELETE", f"/v1/keys/{issued['id']}")

    status, answer = await slow_body(any_proxy, issued["token"], path, body, revoke)
    assert (status, answer["code"]) == (401, "key_revoked")
    assert len(recorder.requests) == before


@pytest.mark.parametrize("request_", [PRICED, FREE], ids=["priced", "free"])
async def test_a_budget_revoked_while_a_body_comes_sends_nothing(
    any_proxy: Proxy, recorder: Recorder, request_: tuple[str, bytes]
) -> None:
    budget_id = await create_budget(any_proxy)
    issued = await any_proxy.issue(budget=budget_id)
    path, body = request_
    status, _ = await slow_body(any_proxy, issued["token"], path, body, nothing)
    assert status == 200
    before = len(recorder.requests)

    async def revoke() -> None:
        await admin(any_proxy, "DELETE", f"/v1/budgets/{budget_id}")

    status, answer = await slow_body(any_proxy, issued["token"], path, body, revoke)
    assert (status, answer["code"]) == (401, "key_revoked")
    assert len(recorder.requests) == before


async def refund(proxy: Proxy, token: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.url + "/stripe/v1/refunds",
            data={"charge": "ch_unknown"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status, await response.json()


async def test_a_key_past_its_uses_makes_no_pricing_look_up(
    any_proxy: Proxy, recorder: Recorder
) -> None:
    """A refund is priced by looking its charge up at Stripe with the real key: that look-up
    counts as the key's use, and a key with none left makes no look-up at all."""
    recorder.answer = {"error": {"message": "No such charge"}}
    recorder.status = 404
    issued = await any_proxy.issue(max_requests=1)
    status, answer = await refund(any_proxy, issued["token"])
    assert (status, answer["code"]) == (400, "bad_request")  # unknown charge
    assert [(m, p) for m, p, _, _ in recorder.requests] == [("GET", "/v1/charges/ch_unknown")]
    assert (await any_proxy.key(issued["id"]))["requests_used"] == 1
    for _ in range(3):
        status, answer = await refund(any_proxy, issued["token"])
        assert (status, answer["code"]) == (429, "uses_exhausted")
    assert len(recorder.requests) == 1  # no look-up since


async def test_a_rate_limited_key_makes_no_pricing_look_up(
    any_proxy: Proxy, recorder: Recorder
) -> None:
    recorder.answer = {"id": "ch_1", "amount": 500, "currency": "usd", "amount_captured": 500}
    issued = await any_proxy.issue(rate_limit="1/h")
    status, _ = await refund(any_proxy, issued["token"])
    assert status == 200
    assert [m for m, _, _, _ in recorder.requests] == ["GET", "POST"]  # look-up, refund
    status, answer = await refund(any_proxy, issued["token"])
    assert (status, answer["code"]) == (429, "rate_limited")
    assert len(recorder.requests) == 2
    assert (await any_proxy.key(issued["id"]))["requests_used"] == 1  # counted once
