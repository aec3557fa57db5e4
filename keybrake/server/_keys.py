"""The typed keys under which the application keeps its shared state."""

from __future__ import annotations

from aiohttp import web

from keybrake.server.http.upstream import Forwarder
from keybrake.server.ledger.audit import AuditLog
from keybrake.server.ledger.ledger import Ledger
from keybrake.server.ledger.metrics import Metrics
from keybrake.server.stores.base import Store

__all__ = [
    "AUDIT",
    "CONFIGURED_ADMIN_HASH",
    "FORWARDER",
    "LEDGER",
    "METRICS",
    "METRICS_TOKEN_HASH",
    "STORE",
]

STORE: web.AppKey[Store] = web.AppKey("store", Store)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)
LEDGER: web.AppKey[Ledger] = web.AppKey("ledger", Ledger)
#: SHA-256 of the master token given by configuration ("" when none is).
CONFIGURED_ADMIN_HASH: web.AppKey[str] = web.AppKey("configured_admin_hash", str)
#: SHA-256 of the bearer token ``/metrics`` asks for ("" when it is open to all).
METRICS_TOKEN_HASH: web.AppKey[str] = web.AppKey("metrics_token_hash", str)
#: How proxied requests reach the vendors.
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
