"""The enforcing reverse proxy: ``ANY /{vendor}/{vendor path}``.

For every request, in order: find the key by the hash of its token (401), check its status
and vendor (401/403), normalise the path (400), match the allowlist (403), price the request
(400/403), reserve its cost atomically (429), forward with the real credential, and settle
or release the reservation from the vendor's answer. Nothing is forwarded unless every check
passed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from keybrake._common import EndpointPattern, UnsafePathError, format_usd, normalise_path
from keybrake.server._http import error_response, hash_token, now_micros, utc_day
from keybrake.server.config import ServerConfig
from keybrake.server.store import KeyRecord, Reservation, SpendState, Store
from keybrake.vendors._pricing import PricingRefusal
from keybrake.vendors.stripe import pricing as stripe_pricing
from keybrake.vendors.twilio import pricing as twilio_pricing

__all__ = ["UPSTREAM_SESSION", "Vendor", "add_routes", "vendors_from_config"]

log = logging.getLogger("keybrake.proxy")

PriceFn = Callable[[str, tuple[str, ...], str, str, bytes], int]

# Request headers passed on to the vendor; everything else (cookies, the vault key, hop-by-hop
# headers) stays here.
_FORWARD_REQUEST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Accept",
        "Accept-Language",
        "Content-Type",
        "Idempotency-Key",
        "Stripe-Version",
        "User-Agent",
        "X-Stripe-Client-User-Agent",
        "X-Twilio-Client",
    )
)
# Response headers not passed back: hop-by-hop, and those aiohttp recomputes.
_DROP_RESPONSE_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Content-Encoding",
        "Content-Length",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Server",
        "Set-Cookie",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Date",
    )
)


@attrs.frozen
class Vendor:
    """How to reach one vendor and what its requests cost."""

    name: str
    base_url: URL
    authorization: str | None = attrs.field(repr=False)
    price: PriceFn


def vendors_from_config(config: ServerConfig) -> dict[str, Vendor]:
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    stripe_auth = f"Bearer {config.stripe_secret_key}" if config.stripe_secret_key else None
    twilio_auth = (
        basic(config.twilio_account_sid, config.twilio_auth_token)
        if config.twilio_account_sid and config.twilio_auth_token
        else None
    )
    return {
        "stripe": Vendor(
            "stripe", URL(config.stripe_api_base), stripe_auth, stripe_pricing.price_request
        ),
        "twilio": Vendor(
            "twilio", URL(config.twilio_api_base), twilio_auth, twilio_pricing.price_request
        ),
    }


VENDORS: web.AppKey[dict[str, Vendor]] = web.AppKey("vendors", dict)
UPSTREAM_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey(
    "upstream_session", aiohttp.ClientSession
)


@functools.lru_cache(maxsize=4096)
def _compile(patterns: tuple[str, ...]) -> tuple[EndpointPattern, ...]:
    return tuple(EndpointPattern.parse(p) for p in patterns)


def _vault_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        # Twilio clients put the key in the password, Stripe's curl style in the user name.
        return password or user or None
    return None


class ProxyHandler:
    def __init__(self, store_key: web.AppKey[Store]) -> None:
        self._store_key = store_key

    async def handle(self, request: web.Request) -> web.StreamResponse:
        vendor_name = request.match_info["vendor"]
        vendors = request.app[VENDORS]
        vendor = vendors.get(vendor_name)
        if vendor is None:
            return error_response(
                404, "unknown_vendor", f"no vendor {vendor_name!r}; use one of {sorted(vendors)}"
            )
        store = request.app[self._store_key]
        refuse = functools.partial(error_response, vendor=vendor.name)

        token = _vault_token(request)
        if token is None:
            return refuse(401, "invalid_key", "missing vault key (Authorization: Bearer ...)")
        key = await store.get_key_by_token_hash(hash_token(token))
        now = now_micros()
        if key is None:
            return refuse(401, "invalid_key", "no such vault key")
        status = key.status(now)
        if status == "revoked":
            return refuse(401, "key_revoked", f"vault key {key.id} was revoked")
        if status == "expired":
            return refuse(401, "key_expired", f"vault key {key.id} has expired")
        if key.vendor != vendor.name:
            return refuse(
                403,
                "vendor_mismatch",
                f"vault key {key.id} is for {key.vendor}, not {vendor.name}",
            )

        raw_path, _, query = request.raw_path.partition("?")
        vendor_path = raw_path[len(vendor.name) + 1 :]
        try:
            segments = normalise_path(vendor_path)
        except UnsafePathError as exc:
            return refuse(400, "bad_request", f"refused path: {exc}")
        method = request.method.upper()
        if not any(p.matches(method, segments) for p in _compile(key.allowed_endpoints)):
            attempted = f"{method} {vendor_path}"
            self._log(key, method, vendor_path, "endpoint_not_allowed")
            return refuse(
                403,
                "endpoint_not_allowed",
                f"{attempted} is not in this key's allowed endpoints",
                attempted=attempted,
                allowed_endpoints=list(key.allowed_endpoints),
            )
        if vendor.authorization is None:
            return refuse(
                503, "vendor_not_configured", f"the server has no {vendor.name} credentials"
            )

        body = await request.read()
        try:
            cost = vendor.price(
                method, segments, query, request.headers.get("Content-Type", ""), body
            )
        except PricingRefusal as refusal:
            self._log(key, method, vendor_path, refusal.code)
            return refuse(refusal.status, refusal.code, refusal.message)

        reservation: Reservation | None = None
        if cost > 0:
            reservation = Reservation(
                id="rsv_" + secrets.token_hex(12), key_id=key.id, day=utc_day(now), amount=cost
            )
            ok, spend = await _reserve(store, reservation, now)
            if not ok:
                self._log(key, method, vendor_path, "cap_exhausted", cost=cost)
                return refuse(
                    429,
                    "cap_exhausted",
                    f"this request (${format_usd(cost)}) would take vault key {key.id} past its"
                    f" daily cap of ${format_usd(key.cap_micros)}",
                    daily_usd_cap=format_usd(key.cap_micros),
                    spent_today_usd=format_usd(spend.spent + spend.reserved),
                    attempted_usd=format_usd(cost),
                )

        return await self._forward(
            request, store, vendor, key, method, vendor_path, query, body, reservation
        )

    async def _forward(
        self,
        request: web.Request,
        store: Store,
        vendor: Vendor,
        key: KeyRecord,
        method: str,
        vendor_path: str,
        query: str,
        body: bytes,
        reservation: Reservation | None,
    ) -> web.StreamResponse:
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in _FORWARD_REQUEST_HEADERS
        }
        assert vendor.authorization is not None
        headers["Authorization"] = vendor.authorization
        url = vendor.base_url.join(URL(vendor_path + ("?" + query if query else ""), encoded=True))
        session = request.app[UPSTREAM_SESSION]
        refuse = functools.partial(error_response, vendor=vendor.name)
        try:
            async with session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                payload = await upstream.read()
        except aiohttp.ClientConnectorError:
            # Nothing reached the vendor: the reservation can safely go back.
            await _finish(store, reservation, settle=False)
            self._log(key, method, vendor_path, "upstream_unavailable")
            return refuse(502, "upstream_unavailable", f"can't reach {vendor.name}")
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            # The request may have reached the vendor: keep it counted.
            await _finish(store, reservation, settle=True)
            timeout = isinstance(exc, asyncio.TimeoutError)
            code = "upstream_timeout" if timeout else "upstream_unavailable"
            self._log(key, method, vendor_path, code)
            return refuse(504 if timeout else 502, code, f"{vendor.name} did not answer in full")
        except asyncio.CancelledError:
            await _finish(store, reservation, settle=True)
            raise

        request_id = upstream.headers.get("Request-Id") or upstream.headers.get("Twilio-Request-Id")
        # A vendor 4xx refused the request: nothing was spent. A 5xx may hide a charge.
        refused = 400 <= upstream.status < 500
        await _finish(store, reservation, settle=not refused, vendor_request_id=request_id)
        self._log(
            key,
            method,
            vendor_path,
            "allowed",
            status=upstream.status,
            cost=reservation.amount if reservation and not refused else 0,
        )
        out_headers = {
            name: value
            for name, value in upstream.headers.items()
            if name.lower() not in _DROP_RESPONSE_HEADERS
        }
        return web.Response(status=upstream.status, body=payload, headers=out_headers)

    @staticmethod
    def _log(key: KeyRecord, method: str, path: str, decision: str, **extra: Any) -> None:
        details = " ".join(f"{k}={v}" for k, v in extra.items())
        log.info("%s %s %s key=%s label=%r %s", decision, method, path, key.id, key.label, details)


async def _reserve(store: Store, reservation: Reservation, now: int) -> tuple[bool, SpendState]:
    """Reserve; if the handler is cancelled meanwhile, give back what was reserved."""
    task = asyncio.ensure_future(store.reserve(reservation, now))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        ok, _ = await task
        if ok:
            await store.release(reservation.id, now_micros())
        raise


async def _finish(
    store: Store,
    reservation: Reservation | None,
    *,
    settle: bool,
    vendor_request_id: str | None = None,
) -> None:
    """Settle or release a reservation; runs to the end even if the handler is cancelled."""
    if reservation is None:
        return
    now = now_micros()
    if settle:
        work = store.settle(reservation.id, reservation.amount, vendor_request_id, now)
    else:
        work = store.release(reservation.id, now)
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def add_routes(app: web.Application, store_key: web.AppKey[Store], config: ServerConfig) -> None:
    app[VENDORS] = vendors_from_config(config)
    app.router.add_route(
        "*", "/{vendor:(?!v1/)[^/]+}/{tail:[\\s\\S]*}", ProxyHandler(store_key).handle
    )
