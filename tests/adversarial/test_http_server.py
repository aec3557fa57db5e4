"""Class 5: the proxy stands on a well-kept HTTP server (aiohttp's), whatever the client sends.

keybrake's own HTTP/1.1 frame hung on requests with bare LF line ends and held pipelined
requests of a client that never read; these run the same bytes against the server now.
"""

from __future__ import annotations

import asyncio

from tests.recorder import Proxy, Recorder


async def exchange(proxy: Proxy, data: bytes) -> bytes:
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        # Bounded: a server that hangs fails the test instead of the suite.
        return await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_bare_lf_line_ends_get_an_answer(proxy: Proxy, recorder: Recorder) -> None:
    head = (
        b"POST /stripe/v1/payment_intents HTTP/1.1\nHost: x\nAuthorization: Bearer vault_key_x\n"
        b"Content-Type: application/x-www-form-urlencoded\nContent-Length: 8\n\namount=1"
    )
    answer = await exchange(proxy, head)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 401)
    assert b"vault_key_x" not in answer
    assert recorder.requests == []


async def test_a_client_that_pipelines_and_never_reads_does_not_stop_the_others(
    proxy: Proxy,
) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        writer.write(request * 5000)  # never read
        answer = await exchange(
            proxy, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    # The server lets go of the connection once the client does.
    answer = await exchange(proxy, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    del reader
