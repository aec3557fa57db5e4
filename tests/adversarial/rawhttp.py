"""Requests sent byte for byte: a client library would tidy up what these tests need odd."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import attrs


@attrs.frozen
class RawAnswer:
    status: int
    head: bytes
    body: bytes

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


async def send(
    base_url: str,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str] | tuple[bytes, bytes]],
    body: bytes = b"",
) -> RawAnswer:
    """Send one request on a connection of its own, exactly as given, and read the answer."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1".encode(), f"Host: {host}".encode()]
    for name, value in headers:
        raw_name = name if isinstance(name, bytes) else name.encode("latin-1")
        raw_value = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(raw_name + b": " + raw_value)
    lines += [b"Content-Length: %d" % len(body), b"Connection: close", b"", b""]
    writer.write(b"\r\n".join(lines) + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, payload = response.partition(b"\r\n\r\n")
    return RawAnswer(int(head.split(b" ", 2)[1]), head, payload)


async def first_answer(base_url: str, *parts: bytes, pause: float = 0.1) -> bytes:
    """Send ``parts`` on a connection of their own, ``pause`` seconds apart, and return the
    first bytes of the answer: not waiting for the connection to end, which aiohttp keeps
    open a while to read and drop what is left of a body it won't use."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for index, part in enumerate(parts):
            if index:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
