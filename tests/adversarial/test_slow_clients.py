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
from keybrake.server.http.upstream import SessionForwarder
from tests.adversarial.rawhttp import send
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
    monkeypatch.setattr(deadlines, "ANSWER_MIN_RATE", 1 << 40)
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


async def test_a_large_answer_taken_slowly_but_steadily_arrives_whole(
    proxy: Proxy, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's deadline grows with its size: 12 MB taken at about 4 MB/s arrive."""
    monkeypatch.setattr(deadlines, "ANSWER_TIMEOUT", 0.2)
    monkeypatch.setattr(deadlines, "ANSWER_MIN_RATE", 2_000_000)
    recorder.answer = BIG
    key = await proxy.issue()
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /stripe/v1/customers/cus_1 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key['token']}\r\nConnection: close\r\n\r\n".encode()
    )
    received = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout=10):
            received += len(chunk)
            await asyncio.sleep(len(chunk) / 4_000_000)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert received > len(BIG["padding"])


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


async def test_a_connection_error_that_is_not_the_clients_is_a_logged_500(
    proxy: Proxy,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a gone client makes a ConnectionError "the client went away": one from a
    forwarder (or a store) of someone else's is a fault, answered 500 and logged as one."""

    async def refused(*args: object, **kwargs: object) -> object:
        raise ConnectionRefusedError("refused by a test")

    monkeypatch.setattr(SessionForwarder, "request", refused)
    key = await proxy.issue()
    answer = await send(
        proxy.url,
        "POST",
        "/stripe/v1/payment_intents",
        [
            ("Authorization", f"Bearer {key['token']}"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"amount=100&currency=usd",
    )
    assert (answer.status, answer.json()["code"]) == (500, "internal_error")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["unexpected error on POST /stripe/v1/payment_intents"]
    entries = await proxy.audit_entries()
    assert [(entry.decision, entry.status) for entry in entries] == [("error", 500)]
