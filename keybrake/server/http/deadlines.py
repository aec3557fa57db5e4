"""How long a client may take to send a request body and to take its answer.

A client holding a connection is a handler waiting, and, on the proxy, a request whose
settlement and audit entry wait with it. aiohttp bounds neither: a body is read and an
answer written for as long as the client keeps the connection open (the idle timeout of
:mod:`keybrake.server.http.server_errors` only covers the wait for a request head). Both
deadlines are totals, not per read or write: a client can't stretch them by sending or
reading a byte at a time.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

__all__ = [
    "ANSWER_MIN_RATE",
    "ANSWER_TIMEOUT",
    "BODY_TIMEOUT",
    "client_gone",
    "read_body",
    "send_answer",
]

#: Seconds a client may take to send a request body once its head has arrived.
BODY_TIMEOUT = 30.0
#: Seconds a client may take to take in its answer, plus a second for each
#: :data:`ANSWER_MIN_RATE` bytes of it: then the connection is dropped.
ANSWER_TIMEOUT = 60.0
#: Bytes a second a client must at least take an answer at, past :data:`ANSWER_TIMEOUT`
#: (256 KiB/s: the largest answer the proxy passes on, 64 MiB, has about five minutes).
ANSWER_MIN_RATE = 256 * 1024

T = TypeVar("T")


async def _within(seconds: float, work: Awaitable[T]) -> T:
    if sys.version_info >= (3, 11):
        # A deadline on the handler's own task: ``wait_for`` (before 3.12) runs the work in
        # a task of its own, one more task per request.
        async with asyncio.timeout(seconds):
            return await work
    return await asyncio.wait_for(work, seconds)  # pragma: no cover


async def read_body(request: web.Request) -> bytes:
    """The request's whole body (at most the application's ``client_max_size``), if it
    arrives within :data:`BODY_TIMEOUT` seconds.

    Raises:
        aiohttp.web.HTTPRequestTimeout: it did not (the middleware answers ``408
            request_timeout``).
        aiohttp.web.HTTPRequestEntityTooLarge: it is larger than ``client_max_size``.
    """
    try:
        return await _within(BODY_TIMEOUT, request.read())
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"the request body did not arrive in {BODY_TIMEOUT:g}s"
        ) from None


async def send_answer(request: web.Request, response: web.Response) -> bool:
    """Write ``response`` whole, or drop the connection if the client doesn't take it within
    :data:`ANSWER_TIMEOUT` seconds and a second per :data:`ANSWER_MIN_RATE` bytes of its
    body, or goes away meanwhile.

    Returns:
        Whether the client took the whole answer. When it didn't, the connection is closed
        and ``response`` may be returned to aiohttp as it is: aiohttp writes nothing more.
    """
    size = response.content_length or 0
    try:
        if _fits(request.transport, size):
            # Nothing to wait for: an answer the transport's buffer takes whole never waits
            # on the client (no timer for most answers, a few per cent of a request's cost).
            await _write(request, response)
        else:
            await _within(ANSWER_TIMEOUT + size / ANSWER_MIN_RATE, _write(request, response))
    except (asyncio.TimeoutError, ConnectionError):
        if request.transport is not None:
            request.transport.abort()
        return False
    return True


#: Bytes allowed for an answer's status line and headers when checking that it fits.
_HEAD_ALLOWANCE = 16 * 1024


def _fits(transport: asyncio.Transport | None, size: int) -> bool:
    """Whether an answer with a body of ``size`` bytes fits in ``transport``'s write buffer
    under its high-water mark, so that writing it never pauses for the client to read."""
    if transport is None or transport.is_closing():
        return False
    _, high = transport.get_write_buffer_limits()
    return transport.get_write_buffer_size() + size + _HEAD_ALLOWANCE <= high


async def _write(request: web.Request, response: web.StreamResponse) -> None:
    await response.prepare(request)
    await response.write_eof()


def client_gone(request: web.Request) -> bool:
    """Whether the request's client has closed its connection (or it was dropped): a
    ``ConnectionError`` is the client's doing only then, and a server's fault otherwise."""
    transport = request.transport
    return transport is None or transport.is_closing()
