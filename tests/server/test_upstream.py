"""The forwarder against a vendor of the tests' own that answers exactly the bytes asked of it.

A real vendor can't be made to chunk, compress, stall or hang up on demand; this one reads a
request head (and its ``Content-Length`` body) and replies with the next scripted answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import attrs
import pytest
from yarl import URL

from keybrake.server.http import upstream
from keybrake.server.http.upstream import (
    Forwarder,
    Origin,
    SessionForwarder,
    UpstreamBroken,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

#: What the vendor does with one request: bytes to send (then keep the connection open),
#: or ``"hang"`` (say nothing), or bytes followed by ``"close"``.
Script = list[bytes | str]


@attrs.define
class ScriptedVendor:
    port: int = 0
    answers: list[Script] = attrs.field(factory=list)
    requests: list[bytes] = attrs.field(factory=list)
    connections: int = 0

    @property
    def origin(self) -> Origin:
        return Origin.from_url(URL(f"http://127.0.0.1:{self.port}/base"))


@contextlib.asynccontextmanager
async def scripted_vendor(tls: ssl.SSLContext | None = None) -> AsyncIterator[ScriptedVendor]:
    vendor = ScriptedVendor()
    tasks: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        vendor.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                vendor.requests.append(head + await reader.readexactly(length))
                script = vendor.answers.pop(0) if vendor.answers else [answer(b"{}")]
                for step in script:
                    if step == "hang":
                        await stop.wait()
                        return
                    elif step == "close":
                        writer.close()
                        return
                    else:
                        assert isinstance(step, bytes)
                        writer.write(step)
                        await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    vendor.port = server.sockets[0].getsockname()[1]
    try:
        yield vendor
    finally:
        server.close()
        stop.set()
        for writer in writers:
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def answer(body: bytes, *, status: str = "200 OK", headers: bytes = b"") -> bytes:
    return (
        (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n" + headers)
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


@pytest.fixture
async def make_forwarder() -> AsyncIterator[Callable[[float], Forwarder]]:
    made: list[Forwarder] = []
    sessions: list[aiohttp.ClientSession] = []

    def make(timeout: float = 5.0) -> Forwarder:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        sessions.append(session)
        forwarder = SessionForwarder(session)
        made.append(forwarder)
        return forwarder

    yield make
    for forwarder in made:
        await forwarder.close()
    for session in sessions:
        await session.close()


async def post(
    forwarder: Forwarder, vendor: ScriptedVendor, body: bytes = b"a=1"
) -> UpstreamResponse:
    return await forwarder.request(
        vendor.origin,
        "POST",
        "/base/v1/things?expand=x",
        [("Content-Type", "application/x-www-form-urlencoded"), ("Authorization", "Bearer sk")],
        body,
    )


async def test_sends_the_request_as_given_and_reads_the_answer(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append([answer(b'{"id": "x"}', headers=b"Request-Id: req_1\r\n")])
        response = await post(make_forwarder(5.0), vendor)
    assert response.status == 200
    assert response.body == b'{"id": "x"}'
    assert response.header("request-id") == "req_1"
    sent = vendor.requests[0]
    assert sent.startswith(b"POST /base/v1/things?expand=x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{vendor.port}\r\n".encode() in sent
    assert b"Authorization: Bearer sk\r\n" in sent
    assert b"Content-Length: 3\r\n" in sent
    assert sent.endswith(b"\r\n\r\na=1")


async def test_a_chunked_answer_is_read_whole(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    chunked = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
    )
    async with scripted_vendor() as vendor:
        vendor.answers.append([chunked[:40], chunked[40:]])
        response = await post(make_forwarder(5.0), vendor)
    assert response.body == b'{"a": 1}'


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_decoded(
    make_forwarder: Callable[[float], Forwarder], encoding: str
) -> None:
    body = b'{"amount": 100}' * 50
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    async with scripted_vendor() as vendor:
        vendor.answers.append(
            [answer(packed, headers=f"Content-Encoding: {encoding}\r\n".encode())]
        )
        response = await post(make_forwarder(5.0), vendor)
    assert response.body == body
    assert response.header("Content-Encoding") is None


async def test_an_answer_without_a_length_ends_with_the_connection(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append(
            [b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"a":', b" 1}", "close"]
        )
        response = await post(make_forwarder(5.0), vendor)
    assert response.body == b'{"a": 1}'


async def test_an_answer_cut_off_is_broken(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append([b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"a":', "close"])
        with pytest.raises(UpstreamBroken):
            await post(make_forwarder(5.0), vendor)


async def test_a_vendor_that_hangs_up_without_answering_is_broken(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append(["close"])
        with pytest.raises(UpstreamBroken):
            await post(make_forwarder(5.0), vendor)
    assert len(vendor.requests) == 1  # it was sent: the vendor may have acted


async def test_a_malformed_answer_is_broken(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append([b"HTTP/1.1 abc nonsense\r\n\r\n", "close"])
        with pytest.raises(UpstreamBroken):
            await post(make_forwarder(5.0), vendor)


async def test_no_answer_in_time_is_a_timeout(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append(["hang"])
        with pytest.raises(UpstreamTimeout):
            await post(make_forwarder(0.3), vendor)
        # The connection is not reused for the next exchange: it still owes an answer.
        vendor.answers.append([answer(b"{}")])
    assert len(vendor.requests) == 1


async def test_nothing_listening_is_unreachable(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        pass  # closed again: its port now refuses connections
    with pytest.raises(UpstreamUnreachable):
        await post(make_forwarder(5.0), vendor)


async def test_informational_answers_are_skipped(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append([b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + answer(b"{}")])
        response = await post(make_forwarder(5.0), vendor)
    assert response.status == 200
    assert response.body == b"{}"


async def test_vendor_errors_are_answers(
    make_forwarder: Callable[[float], Forwarder],
) -> None:
    async with scripted_vendor() as vendor:
        vendor.answers.append([answer(b'{"error": {}}', status="402 Payment Required")])
        response = await post(make_forwarder(5.0), vendor)
    assert response.status == 402


async def test_an_answer_larger_than_the_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch, make_forwarder: Callable[[float], Forwarder]
) -> None:
    forwarder = make_forwarder(5.0)
    monkeypatch.setattr(upstream, "MAX_RESPONSE_BYTES", 100)
    async with scripted_vendor() as vendor:
        vendor.answers.append([answer(b"x" * 101)])
        with pytest.raises(UpstreamBroken, match="larger"):
            await post(forwarder, vendor)
        bomb = gzip.compress(b"0" * 10_000)
        vendor.answers.append([answer(bomb, headers=b"Content-Encoding: gzip\r\n")])
        with pytest.raises(UpstreamBroken, match="larger"):
            await post(forwarder, vendor)
        # A small Content-Length beside chunked framing bounds nothing.
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (101, b"x" * 101)
        vendor.answers.append(
            [
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n" + chunked
            ]
        )
        with pytest.raises(UpstreamBroken):
            await post(forwarder, vendor)


def test_origin_of_a_base_url() -> None:
    origin = Origin.from_url(URL("https://api.stripe.com"))
    assert (origin.host, origin.port, origin.authority, origin.prefix) == (
        "api.stripe.com",
        443,
        "api.stripe.com",
        "",
    )
    origin = Origin.from_url(URL("http://[::1]:8080/stripe/"))
    assert (origin.authority, origin.prefix) == ("[::1]:8080", "/stripe")
    with pytest.raises(ValueError, match="http"):
        Origin.from_url(URL("ftp://example.com"))
