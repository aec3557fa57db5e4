"""Twilio through the proxy, with Prism serving Twilio's own OpenAPI spec behind it."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from keybrake import Keybrake
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.conftest import RunningServer

SOME_ACCOUNT = "AC" + "f" * 32
MESSAGES = f"/2010-04-01/Accounts/{SOME_ACCOUNT}/Messages.json"
TWILIO_ENDPOINTS = [
    "/2010-04-01/Accounts/*/Messages.json",
    "/2010-04-01/Accounts/*/Messages/*",
    "/2010-04-01/Accounts/*/Calls.json",
]


def basic(user: str, password: str) -> dict[str, str]:
    """HTTP Basic, as Twilio's clients send it (aiohttp's BasicAuth is deprecated)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def twilio_key(server: RunningServer, cap: str = "1") -> dict[str, Any]:
    async with server.client() as kb:
        issued = await kb.issue_key("twilio", TWILIO_ENDPOINTS, cap=cap, ttl="5m")
    return {"id": issued.id, "token": issued.token}


async def spent(server: RunningServer, key_id: str) -> str:
    async with server.client() as kb:
        return str((await kb.get_key(key_id)).spent_today_usd)


async def ledger(server: RunningServer, key_id: str) -> list[tuple[str, int | None, bool]]:
    store = SQLiteStore(server.db_path)
    await store.open()
    try:
        return [(e.state, e.settled_amount, e.final) for e in await store.ledger(key_id)]
    finally:
        await store.close()


async def test_message_create_is_forwarded_priced_and_spec_valid(
    twilio_server: RunningServer,
) -> None:
    key = await twilio_key(twilio_server)
    auth = basic(SOME_ACCOUNT, key["token"])
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{twilio_server.url}/twilio{MESSAGES}",
            data={"To": "+15005550006", "From": "+15005550001", "Body": "hello"},
            headers=auth,
        ) as response:
            assert response.status == 201  # Prism validated the request against the spec
            message = await response.json()
        assert message["sid"].startswith("SM")
        assert message["price"] is None  # Twilio prices messages late
        # One GSM-7 segment to +1 at $0.0083, kept as an estimate until Twilio reports.
        assert await spent(twilio_server, key["id"]) == "0.0083"
        assert await ledger(twilio_server, key["id"]) == [("settled", 8300, False)]

        # A request the spec rejects is refused by the vendor, and nothing is counted.
        async with http.post(
            f"{twilio_server.url}/twilio{MESSAGES}",
            data={"To": "+15005550006", "From": "+15005550001", "MediaUrl": "not a url"},
            headers=auth,
        ) as response:
            assert response.status == 422
        assert await spent(twilio_server, key["id"]) == "0.0083"


async def test_call_is_bounded_then_settled_at_twilio_price(twilio_server: RunningServer) -> None:
    key = await twilio_key(twilio_server)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{twilio_server.url}/twilio/2010-04-01/Accounts/{SOME_ACCOUNT}/Calls.json",
            data={
                "To": "+15005550006",
                "From": "+15005550001",
                "Url": "http://example.com/x",
                "TimeLimit": "60",
            },
            headers=basic(SOME_ACCOUNT, key["token"]),
        ) as response,
    ):
        assert response.status == 201
        call = await response.json()
    assert call["price"] == "-0.03000"
    assert await spent(twilio_server, key["id"]) == "0.03"
    assert await ledger(twilio_server, key["id"]) == [("settled", 30000, True)]


async def test_cap_holds_for_messages(twilio_server: RunningServer) -> None:
    key = await twilio_key(twilio_server, cap="0.02")
    auth = basic(SOME_ACCOUNT, key["token"])
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.post(
                f"{twilio_server.url}/twilio{MESSAGES}",
                data={"To": "+15005550006", "From": "+15005550001", "Body": "hi"},
                headers=auth,
            ) as response:
                statuses.append(response.status)
                body = await response.json()
    assert statuses == [201, 201, 429, 429]
    assert body["code"] == "cap_exhausted"


def sdk_client(server: RunningServer, token: str) -> Client:
    client = Client(SOME_ACCOUNT, token, environment={})
    client.api.base_url = f"{server.url}/twilio"
    return client


async def test_official_twilio_sdk_through_the_proxy(twilio_server: RunningServer) -> None:
    key = await twilio_key(twilio_server)
    client = sdk_client(twilio_server, key["token"])
    message = await asyncio.to_thread(
        lambda: client.messages.create(to="+15005550006", from_="+15005550001", body="hi")
    )
    assert message.sid is not None
    assert message.sid.startswith("SM")
    fetched = await asyncio.to_thread(lambda: client.messages(str(message.sid)).fetch())
    assert fetched.price == "-0.00750"
    listed = await asyncio.to_thread(lambda: client.messages.list(limit=2))
    assert len(listed) == 2
    call = await asyncio.to_thread(
        lambda: client.calls.create(
            to="+15005550006", from_="+15005550001", url="http://example.com/x"
        )
    )
    assert call.sid is not None
    # The proxy's refusals reach the SDK as its own exception, with our code and message.
    client_out_of_scope = sdk_client(twilio_server, key["token"])
    with pytest.raises(TwilioRestException) as refused:
        await asyncio.to_thread(lambda: client_out_of_scope.calls("CA" + "0" * 32).fetch())
    assert refused.value.status == 403
    assert "allowed endpoints" in refused.value.msg
    # A call to TwiML the operator doesn't serve could dial anywhere: the SDK is told why.
    with pytest.raises(TwilioRestException) as unpriced:
        await asyncio.to_thread(
            lambda: client.calls.create(
                to="+15005550006", from_="+15005550001", url="https://attacker.example/dial"
            )
        )
    assert unpriced.value.status == 403
    assert "twilio.twiml_urls" in unpriced.value.msg


async def test_twilio_key_on_stripe_and_back(twilio_server: RunningServer, kb: Keybrake) -> None:
    key = await twilio_key(twilio_server)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{twilio_server.url}/stripe/v1/charges",
            headers={"Authorization": f"Bearer {key['token']}"},
        ) as response,
    ):
        assert response.status == 403
        assert (await response.json())["code"] == "vendor_mismatch"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({"From": "+15005550001", "Body": "no destination"}, 400, "bad_request"),
        ({"To": "+15005550006", "TimeLimit": "-1"}, 400, "bad_request"),
        # A name with spaces around it could be trimmed by the vendor into a repeat.
        ({"To": "+15005550006", "Body": "a", "Body ": "b"}, 400, "bad_request"),
    ],
)
async def test_bad_twilio_bodies(
    twilio_server: RunningServer, data: dict[str, str], status: int, code: str | None
) -> None:
    key = await twilio_key(twilio_server)
    path = MESSAGES if "TimeLimit" not in data else MESSAGES.replace("Messages", "Calls")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{twilio_server.url}/twilio{path}",
            data={"From": "+15005550001", "Url": "http://example.com/x", **data},
            headers=basic(SOME_ACCOUNT, key["token"]),
        ) as response,
    ):
        assert response.status == status
        if code:
            assert (await response.json())["code"] == code
