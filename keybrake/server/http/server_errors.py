"""The answers and log lines of errors aiohttp handles itself, before or around our handlers.

A request whose head aiohttp's parser refuses never reaches the application, so the
middleware can't shape its answer: aiohttp answers ``text/plain`` quoting the raw bytes
around the error (an ``Authorization`` line included) and logs the same bytes. The same goes
for an exception that escapes the middleware (aiohttp's ``500`` page). Here those answers
become keybrake's JSON errors, which never echo the request, and aiohttp's own log lines go
through :data:`SERVER_LOG`, which hides credentials (:func:`~keybrake.server.util.redact`).

What this relies on in aiohttp (3.14), checked end to end by
``tests/adversarial/test_error_answers.py``:

- public: ``web.RequestHandler.handle_error(request, status, exc, message)`` is what answers
  a parse error (``status`` 400) or an exception escaping the handler (500, or 504 for a
  timeout), and the ``logger=`` and ``keepalive_timeout=`` keywords of ``web.AppRunner``
  reach the request handler; the keep-alive timer starts when a connection opens and when
  an answer ends, and closes the connection if no whole head has come when it fires;
- private: ``web.AppRunner._make_server`` makes the ``web.Server``; ``web.Server.__call__``
  makes one ``RequestHandler`` per connection from ``Server._loop`` and ``Server._kwargs``.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.http_exceptions import LineTooLong

from keybrake.server.config import DEFAULT_IDLE_TIMEOUT
from keybrake.server.http.errors import error_body
from keybrake.server.util import redact

__all__ = ["SERVER_LOG", "JSONErrorRunner", "RedactingFilter"]


class RedactingFilter(logging.Filter):
    """Rewrites a record so that no credential reaches any handler: its message is rendered
    and redacted, and its traceback is rendered, redacted and kept as text only."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


#: aiohttp's server logger for keybrake: a child of ``aiohttp.server`` (so its handlers and
#: levels still apply) whose records are redacted.
SERVER_LOG = logging.getLogger("aiohttp.server.keybrake")
SERVER_LOG.addFilter(RedactingFilter())


def _describe(status: int, exc: BaseException | None) -> tuple[str, str]:
    """``(code, message)`` for an answer aiohttp makes; never a word of the request."""
    if status >= 500:
        return "internal_error", "unexpected server error"
    if isinstance(exc, LineTooLong):
        return "bad_request", "a request line or header is longer than the server accepts"
    if isinstance(exc, HttpProcessingError):
        return "bad_request", "the request is not valid HTTP/1.1"
    return "bad_request", "the request could not be handled"


class _RequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            # A refused head: nothing was answered yet. aiohttp's line would quote the bytes
            # of the TCP chunk around the error, which may hold most of a token split across
            # chunks, past any redaction that needs the token's prefix: say only what it was.
            self.logger.warning(
                "refused a malformed request from %s: %s", request.remote, type(exc).__name__
            )
        elif isinstance(exc, ConnectionError) and (
            self.transport is None or self.transport.is_closing()
        ):
            # The client went away mid-request (the handler has audited it): nobody to
            # answer, nothing to trace back; aiohttp would log a traceback at ERROR.
            self.logger.debug("the client from %s went away: %s", request.remote, exc)
        else:
            # aiohttp's own: logs (through SERVER_LOG), refuses if an answer was begun.
            super().handle_error(request, status, exc, message)
        # A parse error has no request line (aiohttp's placeholder path is "/"); an escaped
        # exception has one, and a Stripe path gets Stripe's error shape.
        vendor = request.path.lstrip("/").partition("/")[0]
        body, headers = error_body(status, *_describe(status, exc), vendor=vendor)
        response = web.json_response(body, status=status, headers=headers)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        # web.Server.__call__, without its fallback that drops unknown keywords.
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class JSONErrorRunner(web.AppRunner):
    """A ``web.AppRunner`` whose connections answer aiohttp's own errors in JSON and log
    through :data:`SERVER_LOG` (unless given another ``logger``)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("logger", SERVER_LOG)
        # aiohttp's keep-alive timer, whose firing closes a connection still waiting for a
        # whole head: data arriving doesn't reset it, so a head sent a byte at a time is cut
        # off too. aiohttp's default is an hour.
        kwargs.setdefault("keepalive_timeout", DEFAULT_IDLE_TIMEOUT)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
