"""The proxy's fast HTTP frame: plain proxy requests are read and answered here, not by aiohttp.

aiohttp's web server costs several times more per request than keybrake's whole policy
check (see ``docs/performance.md``). This frame reads a connection's requests itself, with
httptools (llhttp, Node.js's parser), and hands the proxy's policy
(:class:`~keybrake.server.proxy.ProxyHandler`) exactly what an aiohttp route would: the same
decisions, answers, audit entries and metrics.

Only the plain case is served here: an HTTP/1.1 ``GET``, ``POST``, ``PUT``, ``PATCH`` or
``DELETE`` under ``/{vendor}/`` with a ``Content-Length`` body (or none) within the size limit.
At the first request that is anything else (the issuance API, ``/metrics``, a chunked body,
``Expect``, an upgrade, HTTP/1.0, an oversized or malformed head), the connection is handed to
aiohttp's own request handler with every byte of that request, and stays there. So nothing
unusual is ever parsed or answered by code of ours.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import http
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from multidict import CIMultiDict

from keybrake.server._keys import PROXY

if TYPE_CHECKING:
    import httptools

    from keybrake.server.proxy import Answer, ProxyHandler

__all__ = ["ProxySite"]

log = logging.getLogger("keybrake.server")

#: Methods this frame serves; any other goes to aiohttp.
_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"})
#: Request headers that send a request to aiohttp (they change how it is read or answered).
_UNUSUAL = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"te"})
#: aiohttp's own limit on a request line or a header field; longer goes to aiohttp, to refuse.
_MAX_FIELD = 8190
#: A head longer than this goes to aiohttp, whatever it holds.
_MAX_HEAD = 32 * 1024
#: An idle connection is closed after this many seconds (aiohttp's keep-alive timeout).
KEEPALIVE_SECONDS = 75.0
_SWEEP_SECONDS = 10.0

#: Statuses whose answers have neither a body nor a ``Content-Length`` (RFC 9110, 8.6).
_NO_BODY = frozenset({204, 304})
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


class _Request:
    """A proxy request read by this frame, as :class:`~keybrake.server.proxy.Incoming`."""

    __slots__ = ("_body", "headers", "method", "raw_path")

    def __init__(self, method: str, raw_path: str, headers: CIMultiDict[str], body: bytes) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self._body = body

    async def read(self) -> bytes:
        return self._body


class _Head:
    """httptools' callbacks for one request head."""

    __slots__ = ("complete", "fields_ok", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.fields_ok = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) + 2 > _MAX_FIELD:
            self.fields_ok = False
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class _Plain:
    """A request this frame serves: its parts, and how many bytes it takes in all."""

    __slots__ = ("close", "headers", "method", "size", "start", "target", "vendor")

    def __init__(
        self,
        method: str,
        target: str,
        vendor: str,
        headers: CIMultiDict[str],
        start: int,
        size: int,
        close: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.vendor = vendor
        self.headers = headers
        self.start = start  # where the body begins
        self.size = size  # head and body
        self.close = close


def _decode(value: bytes) -> str:
    # As aiohttp does: UTF-8, and any other byte kept as it was.
    return value.decode("utf-8", "surrogateescape")


class _Front:
    """What the connections of one site share."""

    def __init__(
        self,
        proxy: ProxyHandler,
        fallback: Callable[[], asyncio.Protocol],
        parser_class: type[httptools.HttpRequestParser],
        *,
        cancel_on_lost: bool,
    ) -> None:
        self.proxy = proxy
        self.fallback = fallback
        self.parser_class = parser_class
        self.cancel_on_lost = cancel_on_lost
        self.prefixes = {f"/{name}/".encode(): name for name in proxy.vendors}
        self.max_body = proxy.max_body_size
        #: Bytes read ahead of the request being served before reading pauses.
        self.max_buffer = self.max_body + _MAX_HEAD
        self.connections: set[_Connection] = set()
        self.closing = False
        self._idle_done: asyncio.Event | None = None
        self._date = b""
        self._date_second = 0

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return self._date

    def sweep(self) -> None:
        """Close connections that have been idle too long."""
        deadline = time.monotonic() - KEEPALIVE_SECONDS
        for connection in list(self.connections):
            if not connection.busy and connection.last_active < deadline:
                connection.close()

    def forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if self._idle_done is not None and not any(c.busy for c in self.connections):
            self._idle_done.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop reading new requests; let those being served finish (up to ``timeout``)."""
        self.closing = True
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        if any(c.busy for c in self.connections):
            self._idle_done = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle_done.wait(), timeout)
            except asyncio.TimeoutError:
                # Cancelled, each request settles at its bound before the store closes.
                tasks = [t for c in self.connections if (t := c.task) is not None]
                log.warning(
                    "%d proxy requests still running after %s s: cancelled", len(tasks), timeout
                )
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        for connection in list(self.connections):
            connection.abort()


class _Connection(asyncio.Protocol):
    """One client connection, until it closes or is handed to aiohttp."""

    def __init__(self, front: _Front) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._plain: _Plain | None = None  # a request whose body is still arriving
        self._task: asyncio.Task[None] | None = None
        self.busy = False
        self._paused = False
        self.last_active = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one)
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        task = self._task
        if task is not None and self._front.cancel_on_lost:
            task.cancel()
        if task is None:
            self._front.forget(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.busy:
            self._next()
        elif len(self._buffer) > self._front.max_buffer and self._transport is not None:
            # A client sending far ahead of its answers waits, rather than fill our memory.
            self._transport.pause_reading()
            self._paused = True

    # reading requests

    def _next(self) -> None:
        """Serve the next request in the buffer, once it is all there."""
        transport = self._transport
        if transport is None:
            return
        self.last_active = time.monotonic()
        if self._front.closing:
            self.close()
            return
        buffer = self._buffer
        plain = self._plain
        if plain is None:
            while buffer[:2] == b"\r\n":  # empty lines between requests are allowed
                del buffer[:2]
            end = buffer.find(b"\r\n\r\n", 0, _MAX_HEAD)
            if end < 0:
                if len(buffer) >= _MAX_HEAD:
                    self._hand_over()
                return
            plain = self._read_head(bytes(buffer[: end + 4]))
            if plain is None:
                self._hand_over()
                return
            self._plain = plain
        if len(buffer) < plain.size:
            return  # the body is still on its way
        body = bytes(buffer[plain.start : plain.size])
        del buffer[: plain.size]
        self._plain = None
        self.busy = True
        request = _Request(plain.method, plain.target, plain.headers, body)
        self._task = asyncio.get_running_loop().create_task(self._serve(request, plain))

    def _read_head(self, head: bytes) -> _Plain | None:
        """The request whose head this is, if this frame serves it; else None."""
        front = self._front
        reader = _Head()
        parser = front.parser_class(reader)
        try:
            parser.feed_data(head)
        except Exception:  # malformed: aiohttp will say so
            return None
        if not reader.complete or not reader.fields_ok or len(reader.url) > _MAX_FIELD:
            return None
        if parser.get_http_version() != "1.1" or parser.get_method() not in _METHODS:
            return None
        url = reader.url
        vendor = front.prefixes.get(url[: url.find(b"/", 1) + 1])
        if vendor is None:
            return None
        length = 0
        close = False
        for name, value in reader.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)  # llhttp accepts digits only, and one length
            elif lowered == b"connection":
                option = value.strip().lower()
                if option == b"close":
                    close = True
                elif option != b"keep-alive":
                    return None
            elif lowered in _UNUSUAL:
                return None
        if length > front.max_body:
            return None  # aiohttp refuses it with the proxy's own 413
        headers = CIMultiDict((_decode(n), _decode(v)) for n, v in reader.headers)
        method = parser.get_method().decode()
        return _Plain(method, _decode(url), vendor, headers, len(head), len(head) + length, close)

    def _hand_over(self) -> None:
        """Give this connection, from the request that starts the buffer, to aiohttp."""
        transport = self._transport
        assert transport is not None
        assert not self.busy
        self._front.forget(self)
        self._transport = None
        data, self._buffer = bytes(self._buffer), bytearray()
        handler = self._front.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    # answering

    async def _serve(self, request: _Request, plain: _Plain) -> None:
        front = self._front
        try:
            await front.proxy.serve(
                request, plain.vendor, functools.partial(self._send, close=plain.close)
            )
        except Exception:
            log.exception("unexpected error on %s %s", plain.method, plain.target)
            self.abort()
        finally:
            self._task = None
            self.busy = False
            if self._transport is None:
                front.forget(self)
            elif plain.close or front.closing:
                self.close()
            else:
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
                self._next()

    async def _send(self, answer: Answer, *, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return  # nobody left to tell
        front = self._front
        status = answer.status
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
            *[
                f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
                for name, value in answer.headers
            ],
            b"Date: %s\r\n" % front.date(),
        ]
        body = answer.body
        if status in _NO_BODY:
            body = b""
        else:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if close or front.closing:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        transport.write(b"".join(parts))

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The request being served, if any."""
        return self._task

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class ProxySite(web.BaseSite):
    """A TCP site whose plain proxy requests take the fast frame; all else goes to aiohttp.

    Raises:
        ImportError: httptools (the ``server`` extra) is not installed.
    """

    __slots__ = (
        "_cancel_on_lost",
        "_front",
        "_host",
        "_parser_class",
        "_port",
        "_sweeper",
        "_timeout",
    )

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        cancel_on_lost: bool = False,
        shutdown_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        import httptools

        super().__init__(runner, **kwargs)
        self._host = host
        self._port = port
        self._parser_class = httptools.HttpRequestParser
        self._cancel_on_lost = cancel_on_lost
        self._front: _Front | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._timeout = shutdown_timeout

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        assert isinstance(runner, web.AppRunner)
        assert runner.server is not None
        front = self._front = _Front(
            runner.app[PROXY],
            runner.server,
            self._parser_class,
            cancel_on_lost=self._cancel_on_lost,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(front),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )
        if self._server.sockets:
            self._port = self._server.sockets[0].getsockname()[1]

        def sweep() -> None:
            front.sweep()
            self._sweeper = loop.call_later(_SWEEP_SECONDS, sweep)

        self._sweeper = loop.call_later(_SWEEP_SECONDS, sweep)

    async def stop(self) -> None:
        await super().stop()  # no new connections
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._front is not None:
            await self._front.shutdown(self._timeout)
