"""Every vendor's client, blocking: Twilio (Prism serving Twilio's spec) through the same
generic wrapper as Stripe, and a vendor the sync facade has no property for."""

from __future__ import annotations

import asyncio

import pytest

from keybrake import ConfigurationError
from keybrake.sync import Keybrake, VaultKey
from keybrake.vendors import stripe as stripe_vendor
from keybrake.vendors.twilio.client import Message
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.vendors.test_twilio_client import TWILIO_ENDPOINTS


async def test_twilio_blocking(twilio_server: RunningServer) -> None:
    def tool() -> tuple[Message, Message, list[Message], str]:
        with (
            Keybrake(
                twilio_server.admin_token, api_url=twilio_server.url, proxy_url=twilio_server.url
            ) as kb,
            VaultKey("twilio", TWILIO_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk,
        ):
            sent = vk.twilio.messages.create(to="+15005550006", from_="+15005550001", body="hi")
            fetched = vk.twilio.messages.retrieve(sent.sid)
            page = vk.twilio.messages.list(page_size=2)
            return sent, fetched, page, kb.get_key(vk.id).status

    sent, fetched, page, status_inside = await asyncio.to_thread(tool)
    assert isinstance(sent, Message)
    assert sent.sid.startswith("SM")
    assert fetched.price_unit == "USD"
    assert all(isinstance(message, Message) for message in page)
    assert status_inside == "active"


def test_any_vendor_by_its_plugin(sync_kb: Keybrake) -> None:
    with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk:
        client = vk.vendor_client(stripe_vendor.VENDOR)
        assert client is vk.stripe
        pi = client.payment_intents.create(amount=100, currency="usd")
        assert vk.stripe.request("GET", f"/v1/payment_intents/{pi.id}")["id"] == pi.id
        with pytest.raises(ConfigurationError, match="for stripe, not twilio"):
            _ = vk.twilio
        with pytest.raises(AttributeError):
            _ = vk.no_such_vendor  # type: ignore[attr-defined]


def test_before_entry_there_is_no_client(sync_kb: Keybrake) -> None:
    vk = VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb)
    with pytest.raises(ConfigurationError, match="not issued yet"):
        _ = vk.stripe
