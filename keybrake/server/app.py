"""The aiohttp application: issuance API and proxy on one port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from keybrake.server._keys import (
    AUDIT,
    CONFIGURED_ADMIN_HASH,
    FORWARDER,
    LEDGER,
    METRICS,
    METRICS_TOKEN_HASH,
    STORE,
)
from keybrake.server.api.input import BadRequest
from keybrake.server.api.routes import Unauthorized
from keybrake.server.api.routes import add_routes as add_api_routes
from keybrake.server.api.tokens import DEFAULT_TENANT, create_admin_token, generate_admin_token
from keybrake.server.config import ServerConfig
from keybrake.server.dashboard import add_routes as add_dashboard_routes
from keybrake.server.http import deadlines
from keybrake.server.http.errors import error_response
from keybrake.server.http.server_errors import RedactingFilter
from keybrake.server.http.upstream import SessionForwarder
from keybrake.server.ledger.audit import AuditLog
from keybrake.server.ledger.ledger import Ledger
from keybrake.server.ledger.metrics import Metrics
from keybrake.server.ledger.retention import Retention
from keybrake.server.proxy.handler import add_routes as add_proxy_routes
from keybrake.server.stores import open_store
from keybrake.server.stores.base import Store, StoreUnavailable
from keybrake.server.util import hash_token, redact
from keybrake.vendors import get_vendor

__all__ = ["DEFAULT_TENANT", "create_app", "generate_admin_token"]

log = logging.getLogger("keybrake.server")
# Faults are logged with their tracebacks, whose text may quote a credential.
log.addFilter(RedactingFilter())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _vendor_of(request: web.Request) -> str | None:
    first = request.path.lstrip("/").partition("/")[0]
    return first if get_vendor(first) is not None else None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON answer with a ``code``; bad input never becomes a 500."""
    vendor = _vendor_of(request)
    try:
        return await handler(request)
    except Unauthorized:
        return error_response(
            401, "unauthorized", "missing or unknown master token (Authorization: Bearer ...)"
        )
    except BadRequest as exc:
        return error_response(400, "bad_request", exc.message, vendor=vendor, param=exc.param)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413, "body_too_large", "request body is larger than the server accepts", vendor=vendor
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout"}.get(
            exc.status, "bad_request"
        )
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, vendor=vendor, headers=allow)
    except StoreUnavailable:
        log.exception("store unavailable")
        return error_response(
            503,
            "store_unavailable",
            "keybrake's store is unavailable; nothing was forwarded",
            vendor=vendor,
        )
    except (aiohttp.ClientPayloadError, ConnectionError):
        if deadlines.client_gone(request):
            raise  # the client went away: nobody to answer
        return _unexpected(request, vendor)
    except Exception:
        return _unexpected(request, vendor)


def _unexpected(request: web.Request, vendor: str | None) -> web.Response:
    """A fault of ours: logged with its traceback (the path redacted), answered 500."""
    log.exception("unexpected error on %s %s", request.method, redact(request.path))
    return error_response(500, "internal_error", "unexpected server error", vendor=vendor)


def create_app(
    config: ServerConfig,
    *,
    store: Store | None = None,
    on_new_admin_token: Callable[[str], None] | None = None,
) -> web.Application:
    """Build the server.

    Args:
        config: the settings.
        store: a store to use instead of the one ``config.database_url`` names.
        on_new_admin_token: when no master token exists at all, one is created at start-up
            and handed to this callback, once; without a callback none is created.
    """
    app = web.Application(
        middlewares=[errors_middleware],
        client_max_size=config.max_body_size,
    )
    app[STORE] = (
        store
        if store is not None
        else open_store(config.database_url, serving=True, upstream_timeout=config.upstream_timeout)
    )
    app[METRICS] = Metrics()
    app[CONFIGURED_ADMIN_HASH] = hash_token(config.admin_token) if config.admin_token else ""
    app[METRICS_TOKEN_HASH] = hash_token(config.metrics_token) if config.metrics_token else ""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        the_store = app[STORE]
        await the_store.open()
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=config.upstream_timeout),
            connector=aiohttp.TCPConnector(limit=0),
            # A vendor's cookies must never ride along with another key's request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        forwarder = app[FORWARDER] = SessionForwarder(session)
        audit = app[AUDIT] = AuditLog(the_store)
        audit.start()
        ledger = app[LEDGER] = Ledger(the_store)
        ledger.audit = audit
        ledger.start()
        retention = Retention(the_store, config.retention_days)
        retention.start()
        try:
            if (
                config.admin_token is None
                and on_new_admin_token is not None
                and await the_store.count_admin_tokens() == 0
            ):
                _, token = await create_admin_token(the_store, DEFAULT_TENANT)
                on_new_admin_token(token)
            yield
        finally:
            await retention.close()
            await ledger.close()
            await audit.close()
            await forwarder.close()
            await session.close()
            await the_store.close()

    app.cleanup_ctx.append(lifecycle)
    add_dashboard_routes(app)  # before the proxy's /{vendor}/..., which /dashboard/... matches
    add_api_routes(app)
    add_proxy_routes(app, config)
    return app
