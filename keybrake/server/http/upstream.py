"""Forwarding a request to a vendor: one HTTP exchange, and what can go wrong with it.

:class:`SessionForwarder` hands the exchange to an :class:`aiohttp.ClientSession`: parsing
and framing the vendor's answer is aiohttp's job, never ours. The answer is read whole, up to
:data:`MAX_RESPONSE_BYTES` (after decompression).

The errors say how far the request got, which decides what happens to its reservation:
:class:`UpstreamUnreachable` means nothing was sent (the reservation can go back); after
:class:`UpstreamTimeout` and :class:`UpstreamBroken` the vendor may have acted (it stays).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
import attrs
from yarl import URL

__all__ = [
    "Forwarder",
    "Origin",
    "SessionForwarder",
    "UpstreamBroken",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]

#: Largest vendor answer read, in bytes: more than any vendor object, less than a DoS.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class UpstreamError(Exception):
    """The vendor gave no complete answer."""


class UpstreamUnreachable(UpstreamError):
    """No connection to the vendor: nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """No complete answer in time; the request may have reached the vendor."""


class UpstreamBroken(UpstreamError):
    """The connection failed or the answer was malformed after the request was sent."""


@attrs.frozen
class Origin:
    """Where a vendor lives: ``scheme://host:port`` and the path its API sits under."""

    scheme: str
    host: str
    port: int
    #: The ``Host`` header: the host, with the port unless it is the scheme's default.
    authority: str
    #: Path prefix of the vendor's base URL, without a trailing ``/`` (often ``""``).
    prefix: str

    @classmethod
    def from_url(cls, url: URL) -> Origin:
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"a vendor base URL must be http(s)://host[:port][/path], not {url}")
        port = url.port or (443 if url.scheme == "https" else 80)
        host = f"[{url.host}]" if ":" in url.host else url.host
        authority = host if url.is_default_port() else f"{host}:{port}"
        return cls(url.scheme, url.host, port, authority, url.raw_path.rstrip("/"))

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.authority}{self.prefix}"


@attrs.frozen
class UpstreamResponse:
    """A vendor's complete answer; the body is decoded if it came compressed."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


class Forwarder(Protocol):
    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send ``method target`` to ``origin`` and read the whole answer.

        ``target`` is the path and query, already under ``origin.prefix``; ``timeout``, if
        given, is this exchange's limit instead of the forwarder's.

        Raises:
            UpstreamUnreachable: nothing was sent.
            UpstreamTimeout: no complete answer in the forwarder's time limit.
            UpstreamBroken: the exchange failed after the request was sent.
        """
        ...

    async def close(self) -> None: ...


class SessionForwarder:
    """Forwards with an :class:`aiohttp.ClientSession` (which this forwarder does not own)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        url = URL(f"{origin.scheme}://{origin.authority}{target}", encoded=True)
        # The session's own limit, unless this exchange has one (``None`` would mean none).
        limit = self._session.timeout if timeout is None else aiohttp.ClientTimeout(timeout)
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=limit,
            ) as response:
                payload = await _read_bounded(response)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(str(exc)) from exc
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("no complete answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamBroken(str(exc)) from exc
        return UpstreamResponse(
            response.status,
            [(k, v) for k, v in response.headers.items() if k.lower() != "content-encoding"],
            payload,
        )

    async def close(self) -> None:
        pass


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The whole (decoded) answer.

    Raises:
        UpstreamBroken: it is larger than :data:`MAX_RESPONSE_BYTES`.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise UpstreamBroken(f"the vendor's answer is larger than {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
