"""Every method of ``vk.twilio``, through the proxy, against Prism serving Twilio's spec."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from keybrake import TwilioError, VaultKey
from keybrake.vendors.twilio.client import Call, Message
from tests.conftest import RunningServer
from tests.recorder import Proxy, Recorder

TWILIO_ENDPOINTS = [
    "/2010-04-01/Accounts/*/Messages.json",
    "/2010-04-01/Accounts/*/Messages/*",
    "/2010-04-01/Accounts/*/Calls.json",
    "/2010-04-01/Accounts/*/Calls/*",
]


@pytest.fixture
async def vk(twilio_server: RunningServer) -> AsyncIterator[VaultKey]:
    async with (
        twilio_server.client() as kb,
        VaultKey("twilio", TWILIO_ENDPOINTS, cap=5, ttl="5m", client=kb) as key,
    ):
        yield key


async def test_messages(vk: VaultKey) -> None:
    sent = await vk.twilio.messages.create(
        to="+15005550006", from_="+15005550001", body="hello", status_callback="https://x.test/cb"
    )
    assert isinstance(sent, Message)
    assert sent.sid.startswith("SM")
    assert sent.status == "queued"
    assert sent.price is None
    assert sent.date_created is not None
    assert sent.date_created.tzinfo is not None
    fetched = await vk.twilio.messages.retrieve(sent.sid)
    assert fetched.price == Decimal("-0.00750")
    assert fetched.price_unit == "USD"
    page = await vk.twilio.messages.list(page_size=2)
    assert len(page) == 2
    assert all(isinstance(m, Message) for m in page)


async def test_calls(vk: VaultKey) -> None:
    call = await vk.twilio.calls.create(
        to="+15005550006", from_="+15005550001", url="http://example.com/twiml", time_limit=60
    )
    assert isinstance(call, Call)
    assert call.sid.startswith("CA")
    assert call.price == Decimal("-0.03000")
    fetched = await vk.twilio.calls.retrieve(call.sid)
    assert fetched.duration == 4


async def test_twilio_errors(vk: VaultKey) -> None:
    with pytest.raises(TwilioError) as caught:
        await vk.twilio.messages.create(
            to="+15005550006", from_="+15005550001", media_url=["not a url"]
        )
    assert caught.value.status == 422
    assert "not valid" in caught.value.message


async def test_sends_are_never_retried(proxy: Proxy, recorder: Recorder) -> None:
    recorder.status = 503
    recorder.answer = {
        "code": 20500,
        "message": "Internal Server Error",
        "more_info": "https://www.twilio.com/docs/errors/20500",
        "status": 503,
    }
    async with (
        proxy.client() as kb,
        VaultKey("twilio", TWILIO_ENDPOINTS, cap=5, ttl="5m", client=kb) as vk,
    ):
        with pytest.raises(TwilioError) as caught:
            await vk.twilio.messages.create(to="+15005550006", from_="+15005550001", body="x")
        assert len(recorder.requests) == 1
        assert caught.value.code == "20500"
        assert caught.value.more_info == "https://www.twilio.com/docs/errors/20500"
        with pytest.raises(TwilioError):
            await vk.twilio.messages.retrieve("SM" + "0" * 32)
        assert len(recorder.requests) > 2  # reads are retried
