"""``vk.stripe_client()`` and ``vk.twilio_client()``: the official SDKs, rebased on the proxy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import stripe

from keybrake import ConfigurationError, Keybrake, VaultKey
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.vendors.test_twilio_client import TWILIO_ENDPOINTS


async def test_stripe_client_sync_and_async(kb: Keybrake) -> None:
    async with VaultKey("stripe", SEED_ENDPOINTS, cap=100, ttl="5m", client=kb) as vk:
        client = vk.stripe_client()
        params: Any = {"amount": 1200, "currency": "usd"}
        created = await asyncio.to_thread(lambda: client.v1.payment_intents.create(params=params))
        fetched = await client.v1.payment_intents.retrieve_async(created.id)
        assert fetched.amount == 1200
        async_created = await client.v1.payment_intents.create_async(params=params)
        assert async_created.id != created.id
        with pytest.raises(stripe.PermissionError):
            await client.v1.customers.list_async()
        spent = (await kb.get_key(vk.id)).spent_today_usd
    assert str(spent) == "24.00"
    # The key is revoked and the SDK's sessions are closed with it (an unclosed session would
    # fail this test with a ResourceWarning).
    assert (await kb.get_key(vk.id)).status == "revoked"
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.payment_intents.retrieve_async(created.id)


async def test_twilio_client(twilio_server: RunningServer) -> None:
    async with (
        twilio_server.client() as kb,
        VaultKey("twilio", TWILIO_ENDPOINTS, cap=1, ttl="5m", client=kb) as vk,
    ):
        client = vk.twilio_client()
        message = await asyncio.to_thread(
            lambda: client.messages.create(to="+15005550006", from_="+15005550001", body="hi")
        )
        assert str(message.sid).startswith("SM")
        fetched = await asyncio.to_thread(lambda: client.messages(str(message.sid)).fetch())
        assert fetched.price == "-0.00750"
        assert (await kb.get_key(vk.id)).spent_today_usd is not None


async def test_official_client_for_the_wrong_vendor(kb: Keybrake) -> None:
    async with VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="5m", client=kb) as vk:
        with pytest.raises(ConfigurationError, match="for stripe, not twilio"):
            vk.twilio_client()
        with pytest.raises(ConfigurationError, match="for stripe, not twilio"):
            _ = vk.twilio


async def test_twilio_client_never_sends_the_key_to_another_twilio_host(
    twilio_server: RunningServer,
) -> None:
    from keybrake import EndpointNotAllowed

    async with (
        twilio_server.client() as kb,
        VaultKey("twilio", TWILIO_ENDPOINTS, cap=1, ttl="5m", client=kb) as vk,
    ):
        client = vk.twilio_client()
        for call in (
            lambda: client.verify.v2.services.list(),
            lambda: client.lookups.v2.phone_numbers("+15005550006").fetch(),
        ):
            with pytest.raises(EndpointNotAllowed):
                await asyncio.to_thread(call)
