"""The typed keys under which the application keeps its shared state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from keybrake.server.audit import AuditLog
from keybrake.server.ledger import Ledger
from keybrake.server.metrics import Metrics
from keybrake.server.store import Store

if TYPE_CHECKING:
    from keybrake.server.proxy import ProxyHandler, Vendor
    from keybrake.server.upstream import Forwarder

__all__ = [
    "AUDIT",
    "CONFIGURED_ADMIN_HASH",
    "FORWARDER",
    "LEDGER",
    "METRICS",
    "PROXY",
    "STORE",
    "UPSTREAM_SESSION",
    "VENDORS",
]

STORE: web.AppKey[Store] = web.AppKey("store", Store)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)
LEDGER: web.AppKey[Ledger] = web.AppKey("ledger", Ledger)
#: SHA-256 of the master token given by configuration ("" when none is).
CONFIGURED_ADMIN_HASH: web.AppKey[str] = web.AppKey("configured_admin_hash", str)
VENDORS: web.AppKey[dict[str, Vendor]] = web.AppKey("vendors", dict)
#: The connection pool to the vendors.
UPSTREAM_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey(
    "upstream_session", aiohttp.ClientSession
)
#: How proxied requests reach the vendors.
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
#: The proxy's policy, which the fast HTTP frame calls directly.
PROXY: web.AppKey[ProxyHandler] = web.AppKey("proxy")
