"""The official Twilio SDK over :func:`proxy_only_http_client`: the vault key goes nowhere else."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from keybrake import EndpointNotAllowed, VaultKey
from keybrake.vendors.twilio.client import PLACEHOLDER_ACCOUNT_SID
from keybrake.vendors.twilio.official import proxy_only_http_client
from tests.conftest import RunningServer
from tests.vendors.test_twilio_client import TWILIO_ENDPOINTS

TOKEN = "vault_key_not_a_real_one"


class OtherHost:
    """A loopback listener standing for verify.twilio.com & co: it never answers, but the
    kernel completes every connection attempt, so :meth:`connections` counts them."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.socket.setblocking(False)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def connections(self) -> int:
        count = 0
        while True:
            try:
                connection, _ = self.socket.accept()
            except BlockingIOError:
                return count
            connection.close()
            count += 1


@pytest.fixture
def other_host() -> Iterator[OtherHost]:
    host = OtherHost()
    try:
        yield host
    finally:
        host.socket.close()


def sdk_client(http_client: TwilioHttpClient, proxy: str, other: str, **options: Any) -> Any:
    """An SDK client as ``vk.twilio_client()`` makes it, its other domains on ``other``."""
    client = Client(
        PLACEHOLDER_ACCOUNT_SID, TOKEN, http_client=http_client, environment={}, **options
    )
    client.api.base_url = f"{proxy}/twilio"
    for domain in (client.verify, client.lookups, client.messaging):
        domain.base_url = other
    return client


def close(http_client: TwilioHttpClient) -> None:
    if http_client.session is not None:
        http_client.session.close()


def test_the_stock_client_sends_the_vault_key_to_other_hosts(other_host: OtherHost) -> None:
    # What the proxy-only client is for: the stock one connects (and would authenticate).
    http_client = TwilioHttpClient(timeout=0.5)
    client = sdk_client(http_client, "http://127.0.0.1:9", other_host.url)
    try:
        with pytest.raises(OSError, match="timed out"):  # requests' errors are OSErrors
            client.verify.v2.services.list()
    finally:
        close(http_client)
    assert other_host.connections() == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda client: client.verify.v2.services.list(),
        lambda client: client.verify.v2.services("VA1").verifications.create(
            to="+15005550006", channel="sms"
        ),
        lambda client: client.lookups.v2.phone_numbers("+15005550006").fetch(),
        lambda client: client.messaging.v1.services.list(),
    ],
)
def test_other_twilio_hosts_are_refused_before_sending(call: Any, other_host: OtherHost) -> None:
    http_client = proxy_only_http_client("http://127.0.0.1:9", timeout=1)
    client = sdk_client(http_client, "http://127.0.0.1:9", other_host.url)
    try:
        with pytest.raises(EndpointNotAllowed, match="not keybrake's Twilio proxy") as refused:
            call(client)
    finally:
        close(http_client)
    assert refused.value.code == "endpoint_not_allowed"
    assert f" {other_host.url}/v" in str(refused.value.body["attempted"])
    assert other_host.connections() == 0


def test_the_real_hosts_and_an_edge_are_refused() -> None:
    http_client = proxy_only_http_client("https://proxy.example", timeout=1)
    client = Client(PLACEHOLDER_ACCOUNT_SID, TOKEN, http_client=http_client, environment={})
    client.api.base_url = "https://proxy.example/twilio"
    try:
        with pytest.raises(EndpointNotAllowed, match=r"GET https://verify\.twilio\.com/v2/Serv"):
            client.verify.v2.services.list()
        with pytest.raises(EndpointNotAllowed, match=r"lookups\.twilio\.com"):
            client.lookups.v2.phone_numbers("+15005550006").fetch()
        # An edge rewrites the proxy's own host (proxy.sydney.us1.proxy.example): refused too.
        client.edge = "sydney"
        with pytest.raises(EndpointNotAllowed, match=r"https://proxy\.sydney\.us1\.proxy\."):
            client.messages.list(limit=1)
        # A host that merely starts like the proxy's is another host.
        with pytest.raises(EndpointNotAllowed):
            http_client.request("GET", "https://proxy.example.evil.test/twilio/2010-04-01/x")
        with pytest.raises(EndpointNotAllowed):
            http_client.request("GET", "https://proxy.example/twilioX/2010-04-01/x")
    finally:
        close(http_client)


async def test_the_proxy_still_works(twilio_server: RunningServer, other_host: OtherHost) -> None:
    async with (
        twilio_server.client() as kb,
        VaultKey("twilio", TWILIO_ENDPOINTS, cap=1, ttl="5m", client=kb) as vk,
    ):
        http_client = proxy_only_http_client(twilio_server.url + "/", timeout=10)
        client = Client(PLACEHOLDER_ACCOUNT_SID, vk.token, http_client=http_client, environment={})
        client.api.base_url = f"{twilio_server.url}/twilio"
        client.verify.base_url = other_host.url
        try:
            message = await asyncio.to_thread(
                lambda: client.messages.create(to="+15005550006", from_="+15005550001", body="hi")
            )
            assert str(message.sid).startswith("SM")
            with pytest.raises(EndpointNotAllowed):
                await asyncio.to_thread(client.verify.v2.services.list)
        finally:
            close(http_client)
    assert other_host.connections() == 0
