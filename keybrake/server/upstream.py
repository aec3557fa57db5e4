"""Forwarding a request to a vendor: one HTTP/1.1 exchange, and what can go wrong with it.

Two forwarders give the proxy the same answers and the same errors:

- :class:`PooledForwarder` speaks HTTP/1.1 itself over pooled keep-alive connections, with
  httptools (llhttp, Node.js's parser) reading the answers. It is the fast one, and needs the
  ``server`` extra.
- :class:`SessionForwarder` hands the exchange to an :class:`aiohttp.ClientSession`; it is what
  runs when httptools is not installed.

The errors say how far the request got, which decides what happens to its reservation:
:class:`UpstreamUnreachable` means nothing was sent (the reservation can go back); after
:class:`UpstreamTimeout` and :class:`UpstreamBroken` the vendor may have acted (it stays).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from typing import TYPE_CHECKING, Protocol, cast

import aiohttp
import attrs
from yarl import URL

if TYPE_CHECKING:
    import httptools

__all__ = [
    "Forwarder",
    "Origin",
    "PooledForwarder",
    "SessionForwarder",
    "UpstreamBroken",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]

#: An idle pooled connection older than this is closed instead of reused (aiohttp's default).
KEEPALIVE_SECONDS = 15.0
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
    ) -> UpstreamResponse:
        """Send ``method target`` to ``origin`` and read the whole answer.

        ``target`` is the path and query, already under ``origin.prefix``.

        Raises:
            UpstreamUnreachable: nothing was sent.
            UpstreamTimeout: no complete answer in the forwarder's time limit.
            UpstreamBroken: the exchange failed after the request was sent.
        """
        ...

    async def close(self) -> None: ...


# -- aiohttp ---------------------------------------------------------------------------------


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
    ) -> UpstreamResponse:
        url = URL(f"{origin.scheme}://{origin.authority}{target}", encoded=True)
        try:
            async with self._session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            ) as response:
                payload = await response.read()
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


# -- our own HTTP/1.1 ------------------------------------------------------------------------


def _decoder(encoding: str) -> zlib._Decompress | None:
    """A decompressor for a ``Content-Encoding``; None for identity.

    Raises:
        UpstreamBroken: an encoding we did not ask for.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise UpstreamBroken(f"the vendor answered in an encoding we did not ask for: {encoding}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a vendor, carrying one exchange at a time."""

    def __init__(self, parser_class: type[httptools.HttpResponseParser]) -> None:
        self._parser_class = parser_class
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head_only = False
        self._reusable = False
        #: The answer has neither a length nor chunks: it ends where the connection does.
        self._ends_with_connection = False
        #: Why a callback stopped the parser (httptools wraps what a callback raises).
        self._failure: UpstreamBroken | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one)
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        parser = self._parser
        if exc is None and parser is not None and self._ends_with_connection:
            self._complete(waiter, reusable=False)
            return
        waiter.set_exception(UpstreamBroken("the vendor closed the connection mid-answer"))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost finishes the exchange

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # nothing asked: a vendor talking out of turn
            if self.transport is not None:
                self.transport.abort()
            return
        try:
            parser.feed_data(data)
        except Exception as exc:  # httptools' parse errors and our own
            waiter, self._waiter = self._waiter, None
            if self.transport is not None:
                self.transport.abort()
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    self._failure or UpstreamBroken(f"malformed answer from the vendor: {exc}")
                )

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        names = {name.lower(): value for name, value in self._headers}
        self._ends_with_connection = (
            "content-length" not in names
            and "chunked" not in names.get("transfer-encoding", "").lower()
        )
        if self._head_only and self._parser.get_status_code() >= 200:
            # A HEAD answer has no body whatever its headers say; llhttp can't know that,
            # so this connection can't be trusted with another exchange.
            self._finish(reusable=False)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE_BYTES:
            self._failure = UpstreamBroken("the vendor's answer is larger than the proxy accepts")
            raise self._failure
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self._parser.get_status_code() < 200:
            self._start_answer()  # 1xx: informational, the real answer follows
            return
        self._finish(reusable=bool(self._parser.should_keep_alive()))

    # the exchange

    def _finish(self, *, reusable: bool) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            self._complete(waiter, reusable=reusable)

    def _complete(self, waiter: asyncio.Future[UpstreamResponse], *, reusable: bool) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        headers, body = self._headers, b"".join(self._body)
        self._parser = None
        encoding = ""
        kept = []
        for name, value in headers:
            if name.lower() == "content-encoding":
                encoding = value
            else:
                kept.append((name, value))
        try:
            decoder = _decoder(encoding)
            if decoder is not None:
                decoded = decoder.decompress(body, MAX_RESPONSE_BYTES)
                if decoder.unconsumed_tail:
                    raise UpstreamBroken("the vendor's answer is larger than the proxy accepts")
                body = decoded + decoder.flush()
        except (UpstreamBroken, zlib.error) as exc:
            waiter.set_exception(
                exc if isinstance(exc, UpstreamBroken) else UpstreamBroken(str(exc))
            )
            reusable = False
        else:
            waiter.set_result(UpstreamResponse(status, kept, body))
        self._reusable = reusable and self.transport is not None

    def _start_answer(self) -> None:
        self._headers, self._body, self._size = [], [], 0
        self._ends_with_connection = False

    def exchange(self, raw: bytes, *, head_only: bool) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        assert self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._parser = self._parser_class(self)
        self._start_answer()
        self._head_only = head_only
        self._reusable = False
        self._failure = None
        self.transport.write(raw)
        return self._waiter

    @property
    def reusable(self) -> bool:
        return self._reusable and self.transport is not None and self._waiter is None

    def expire(self) -> None:
        """Give up on the exchange: the answer did not come in time."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamTimeout("no complete answer in time"))
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class PooledForwarder:
    """HTTP/1.1 over keep-alive connections, one pool per origin, no limit on their number.

    Every exchange has ``timeout`` seconds in all (connecting included). Answers may be
    chunked, compressed (gzip, deflate: we ask for them, as aiohttp does) or end with the
    connection.

    Raises:
        ImportError: httptools is not installed (the ``server`` extra).
    """

    def __init__(self, *, timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        import httptools

        self._parser_class = httptools.HttpResponseParser
        self._timeout = timeout
        self._ssl = ssl_context
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._closed = False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self._parser_class),
                origin.host,
                origin.port,
                ssl=self._tls() if origin.scheme == "https" else None,  # checks origin.host
            )
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnreachable(f"can't connect to {origin.base}: {exc}") from exc
        return connection

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.reusable and now - connection.idle_since < KEEPALIVE_SECONDS:
                return connection
            connection.close()
        return None

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse:
        if self._closed:
            raise UpstreamUnreachable("the forwarder is closed")
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.authority}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("Accept-Encoding: gzip, deflate\r\n\r\n")
        raw = "".join(lines).encode("latin-1") + body

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        connection = self._take(origin)
        if connection is None:
            try:
                connection = await asyncio.wait_for(self._connect(origin), self._timeout)
            except asyncio.TimeoutError:
                raise UpstreamUnreachable(f"can't connect to {origin.base} in time") from None
        self._busy.add(connection)
        timer = loop.call_at(deadline, connection.expire)
        try:
            response = await connection.exchange(raw, head_only=method == "HEAD")
        except BaseException:
            connection.close()
            raise
        finally:
            timer.cancel()
            self._busy.discard(connection)
        if connection.reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, collections.deque()).append(connection)
        else:
            connection.close()
        return response

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in self._busy:
            connection.close()
