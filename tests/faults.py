"""A loopback HTTP proxy of the tests' own that injects faults, one request at a time.

Real peers can't drop, reset or delay a connection on demand, so this sits between the SDK
and the keybrake server. Each request it receives takes the next fault from ``faults``
(``"pass"`` when the list is empty):

- ``"pass"``: forward to the server and relay its answer;
- ``"drop"``: close the connection without answering, nothing forwarded;
- ``"reset"``: abort the connection (TCP RST), nothing forwarded;
- ``"lost"``: forward to the server, then drop its answer (the server *did* act);
- ``"delay:S"``: wait S seconds, then pass;
- ``"status:N"`` or ``"status:N:retry_after=S"``: answer HTTP N itself, nothing forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator

import attrs

__all__ = ["FaultProxy", "fault_proxy"]


@attrs.define
class FaultProxy:
    url: str = ""
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    faults: list[str] = attrs.field(factory=list)
    seen: list[tuple[str, str]] = attrs.field(factory=list)  # (request line, fault)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head + body


def _close_after(request: bytes) -> bytes:
    """The same request, asking the server to close the connection after answering."""
    head, _, body = request.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body


async def _forward(proxy: FaultProxy, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*proxy.upstream)
    try:
        writer.write(_close_after(request))
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _answer(status: int, retry_after: str | None) -> bytes:
    body = json.dumps({"code": "injected", "message": f"injected HTTP {status}"}).encode()
    headers = [
        f"HTTP/1.1 {status} Injected",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _serve(
    proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        request = await _read_request(reader)
        if request is None:
            return
        fault = proxy.faults.pop(0) if proxy.faults else "pass"
        proxy.seen.append((request.split(b"\r\n", 1)[0].decode(), fault))
        kind, _, arg = fault.partition(":")
        if kind == "reset":
            _reset(writer)
            return
        if kind == "drop":
            return
        if kind == "status":
            status, _, rest = arg.partition(":")
            retry_after = rest.removeprefix("retry_after=") if rest else None
            writer.write(_answer(int(status), retry_after))
            await writer.drain()
            return
        if kind == "delay":
            await asyncio.sleep(float(arg))
        answer = await _forward(proxy, request)
        if kind == "lost":
            _reset(writer)
            return
        writer.write(answer)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def fault_proxy(upstream_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy on 127.0.0.1 in front of ``upstream_url`` (``http://host:port``)."""
    host, port = upstream_url.removeprefix("http://").split(":")
    proxy = FaultProxy(upstream=(host, int(port)))
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _serve(proxy, reader, writer)
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield proxy
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
