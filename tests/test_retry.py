"""Issuance rides out a server that is not there yet, and makes exactly one key."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from keybrake import Keybrake, KeybrakeUnavailable, RetryPolicy, VaultKey
from keybrake._errors import KeybrakeError
from keybrake._retry import is_retryable
from keybrake.server import running_server
from tests.conftest import SEED_ENDPOINTS, make_config


def reserved_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_issuance_retries_until_the_server_is_up(
    tmp_path: Path, localstripe_url: str
) -> None:
    port = reserved_port()
    config = make_config(tmp_path / "kb.db", localstripe_url)
    url = f"http://127.0.0.1:{port}"
    up = asyncio.Event()
    done = asyncio.Event()

    async def serve_later() -> None:
        await asyncio.sleep(0.4)
        async with running_server(config, port=port):
            up.set()
            await done.wait()

    server_task = asyncio.create_task(serve_later())
    retry = RetryPolicy(attempts=20, initial_wait=0.05, max_wait=0.2, deadline=10)
    try:
        async with Keybrake(config.admin_token, api_url=url, proxy_url=url, retry=retry) as kb:
            async with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk:
                assert up.is_set()
                await vk.stripe.payment_intents.create(amount=100, currency="usd")
            assert (await kb.get_key(vk.id)).status == "revoked"
    finally:
        done.set()
        await server_task


async def test_exhausted_retries_raise_keybrake_unavailable() -> None:
    url = f"http://127.0.0.1:{reserved_port()}"
    retry = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02)
    async with Keybrake("kb_admin_x", api_url=url, proxy_url=url, retry=retry) as kb:
        with pytest.raises(KeybrakeUnavailable) as caught:
            await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl=60)
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (500, None, True),
        (503, "store_unavailable", True),
        (429, None, True),
        (429, "too_many_requests", True),
        # keybrake's brakes are final answers (CONTRACT §3): never retried on their own
        (429, "rate_limited", False),
        (429, "uses_exhausted", False),
        (429, "budget_exhausted", False),
        (429, "cap_exhausted", False),
        (400, "bad_request", False),
        (401, "unauthorized", False),
        (409, "key_revoked", False),
    ],
)
def test_what_is_retryable(status: int, code: str | None, retryable: bool) -> None:
    body = {"code": code, "message": "x"} if code else {"message": "x"}
    assert is_retryable(KeybrakeError.from_response(status, body)) is retryable
