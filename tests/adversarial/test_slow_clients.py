"""Slow clients are bounded: one that doesn't take its answer, or hangs up while it comes,
holds neither the connection nor the request's settlement, and leaves no error in the log.

(The wait for a request head: ``test_error_answers.py``; for a request body:
``test_forwarding.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest

from keybrake.server.http import deadlines
from tests.recorder import Proxy, Recorder

#: An answer far larger than what loopback's socket buffers hold for a client not reading.
BIG = {"id": "pi_big", "padding": "x" * 12_000_000}


async def stalled_client(
    proxy: Proxy, head: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sends ``head`` and then reads nothing, with a small receive buffer."""
    host, port = proxy.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def settled(proxy: Proxy, key_id: str, seconds: float = 20.0) -> bool:
    """Whether the key's reservation is settled (nothing reserved, something spent) in time."""
    for _ in range(int(seconds / 0.1)):
        key = await proxy.key(key_id)
        if key["spent_today_usd"] != "0.00" and key["reserved_today_usd"] == "0.00":
            return True
        await asyncio.sleep(0.1)
    return False


async def test_an_answer_the_client_does_not_take_is_dropped_and_settled(
    proxy: Proxy, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadlines, "ANSWER_TIMEOUT", 0.5)
    recorder.answer = BIG
    key = await proxy.issue()
    body = "amount=100&currency=usd"
    reader, writer = await stalled_client(
        proxy,
        f"POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key['token']}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}",
    )
    try:
        # The vendor has answered; the client takes none of it. The settlement and the audit
        # entry don't wait for it: the connection is dropped once the answer's time is up.
        assert await settled(proxy, key["id"])
        assert (await proxy.key(key["id"]))["spent_today_usd"] == "1.00"
        entries = await proxy.audit_entries()
        assert [(entry.decision, entry.status) for entry in entries] == [("allowed", 200)]
        received = 0
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout=10):
                received += len(chunk)
        assert received < len(BIG["padding"])  # cut off, not delivered after all
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_client_hanging_up_on_its_answer_logs_no_error_and_no_token(
    proxy: Proxy, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder.answer = BIG
    key = await proxy.issue()
    token = key["token"]
    # The token in the path too: a log line quoting the path must not carry it.
    reader, writer = await stalled_client(
        proxy,
        f"GET /stripe/v1/customers/{token} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n",
    )
    await asyncio.wait_for(reader.read(4096), timeout=10)  # the answer has begun
    writer.transport.abort()  # and the client is gone
    entries = await proxy.audit_entries()
    assert [(entry.decision, entry.status) for entry in entries] == [("allowed", 200)]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert token not in caplog.text
