"""Run the server inside an existing event loop (for embedding, the demo, the CLI and tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from keybrake.server.app import create_app
from keybrake.server.config import ServerConfig
from keybrake.server.http.server_errors import JSONErrorRunner
from keybrake.server.stores.base import Store

__all__ = ["running_server"]


@contextlib.asynccontextmanager
async def running_server(
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    store: Store | None = None,
    on_new_admin_token: Callable[[str], None] | None = None,
    handler_cancellation: bool = False,
    handle_signals: bool = False,
    app: web.Application | None = None,
) -> AsyncIterator[str]:
    """Serve keybrake on ``host:port`` (port 0 picks a free one) and yield its base URL.

    ``handler_cancellation`` cancels a request's handler
    when its client goes away (aiohttp's option of that name); ``handle_signals`` makes
    SIGINT and SIGTERM raise :class:`aiohttp.web.GracefulExit`. ``app`` is one already made
    by :func:`~keybrake.server.app.create_app` from ``config``. Everything it started is
    stopped on exit, requests being served first. Errors aiohttp answers itself (a malformed
    request head, an exception escaping the middleware) are JSON errors too, and its log
    lines hide credentials (:mod:`keybrake.server.http.server_errors`).
    """
    if app is None:
        app = create_app(config, store=store, on_new_admin_token=on_new_admin_token)
    runner = JSONErrorRunner(
        app,
        keepalive_timeout=config.idle_timeout,
        access_log=None,
        handler_cancellation=handler_cancellation,
        handle_signals=handle_signals,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()
