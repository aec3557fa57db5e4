"""The enforcing reverse proxy: ``ANY /{vendor}/{vendor path}``.

For every request, in order: refuse headers that can be read two ways (400, see
:mod:`keybrake.server.proxy.shaping`), find the key by the hash of its token (401), check its
status and vendor (401/403), normalise the path (400), match the allowlist (403), check the
account the key is pinned to (403), read the body and query into their one reading (400), price that
(400/403), reserve its cost atomically (429), forward exactly what was priced with the real
credential, and settle or release the reservation from the vendor's answer. Nothing is
forwarded unless every check passed.

Requests that name no key of ours (no token, an unknown one, an unknown vendor) are counted
in the metrics, not written to the audit log: a flood of them costs no disk.

Brakes (CONTRACT §3): a priced request is admitted (the key's use count and rate limit) and
reserved against the key's cap and its run budget's in one atomic step of the store; a free
request of a key with a rate limit or a use count is admitted in one step of its own, and a
free request of any other key touches no store but to look its key up again once its body
has come (a key revoked meanwhile sends nothing; the store's steps check that too). A braked
key's request whose price needs a look-up at the vendor is admitted before the look-up
goes, and stays counted whatever pricing then says. Refusals are final answers (429
``uses_exhausted``, ``rate_limited`` with ``Retry-After``, ``budget_exhausted``,
``cap_exhausted``) and leave nothing counted. An admitted request stays counted even if the
vendor can't be reached: a loop retrying against a vendor that is down still uses up its
requests, which is what the brake is for.

Settling: a 2xx settles at what the vendor says it cost (or the estimate, until the vendor
reports the price); a 4xx means the vendor refused, so the reservation is released; a 5xx,
a timeout or a connection lost after sending may hide a charge, so the estimate stays
counted. Only a connection that never reached the vendor releases it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from keybrake._common import UnsafePathError, format_usd
from keybrake.server._keys import (
    AUDIT,
    FORWARDER,
    LEDGER,
    METRICS,
    STORE,
)
from keybrake.server.config import ServerConfig
from keybrake.server.http import deadlines
from keybrake.server.http.server_errors import RedactingFilter
from keybrake.server.http.upstream import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from keybrake.server.proxy.parts import (
    MAX_AUDIT_PATH,
    Answer,
    _allowed,
    _Facts,
    _lookup,
    _normalise,
    _Refused,
    _ReservationIds,
    _settle_success,
    _UpstreamDown,
    _vault_token,
)
from keybrake.server.proxy.shaping import (
    FORM,
    JSON,
    BadRequest,
    HeaderRules,
    canonical_form,
    canonical_json,
    canonical_query,
    check_headers,
    fingerprint,
    forwarded_headers,
)
from keybrake.server.proxy.vendors import VENDORS, ProxiedVendor, vendors_from_config
from keybrake.server.stores.base import (
    AuditEntry,
    KeyRecord,
    Reservation,
    ReserveResult,
    Settlement,
    SpendState,
    StoreUnavailable,
)
from keybrake.server.util import hash_token, now_micros, redact, utc_day
from keybrake.vendors._pricing import PricingRefusal, Quote, VendorRequest

__all__ = ["Answer", "ProxyHandler", "add_routes"]

log = logging.getLogger("keybrake.proxy")
#: The proxy's faults, logged with their tracebacks: an exception's text may quote what it
#: was handling (a header, a vendor's answer), so its records are redacted.
fault_log = logging.getLogger("keybrake.proxy.faults")
fault_log.addFilter(RedactingFilter())

#: A vendor replays a request carrying a known idempotency key for this long (Stripe: 24 h).
IDEMPOTENCY_WINDOW_MICROS = 24 * 3600 * 1_000_000

# Response headers not passed back: hop-by-hop, and those aiohttp recomputes.
_DROP_RESPONSE_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Content-Encoding",
        "Content-Length",
        "Date",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Server",
        "Set-Cookie",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)


@attrs.frozen
class _Decided:
    """One proxy request as the policy read it: what is priced is what is forwarded."""

    vendor: ProxiedVendor
    key: KeyRecord
    request: VendorRequest
    #: Headers for the vendor, its credential and the key's account included.
    headers: list[tuple[str, str]]
    idempotency_key: str | None


class _AdmitOnLookup:
    """A braked key's admission, made before the pricer's first look-up at the vendor.

    A look-up is a request to the vendor with the real credential: a key past its brakes
    makes none, and a request that needed one counts as a use even if pricing then refuses
    it (the reservation that follows doesn't admit it again).
    """

    def __init__(
        self,
        handler: ProxyHandler,
        facts: _Facts,
        key: KeyRecord,
        lookup: Callable[[str], Awaitable[Mapping[str, Any] | None]],
    ) -> None:
        self._handler, self._facts, self._key, self._lookup = handler, facts, key, lookup
        self._lock = asyncio.Lock()
        self.admitted = False

    async def lookup(self, path: str) -> Mapping[str, Any] | None:
        """Admit the request (once), then look up.

        Raises:
            _Refused: a brake refused the request; nothing was looked up.
        """
        async with self._lock:
            if not self.admitted:
                handler, key = self._handler, self._key
                result, spend = await handler._app[LEDGER].admit(key.id, now_micros())
                refused = handler._braked(self._facts, key, result, spend, 0)
                if refused is not None:
                    raise _Refused(refused)
                self.admitted = True
        return await self._lookup(path)


class ProxyHandler:
    """The proxy's policy, served as the aiohttp route ``ANY /{vendor}/{tail}``."""

    def __init__(self, app: web.Application, config: ServerConfig) -> None:
        self._app = app
        self._ids = _ReservationIds()
        #: Durable audit: an answer goes back only once its audit entry is committed.
        self._durable = config.audit == "durable"
        self._header_rules: dict[str, HeaderRules] = {}

    @property
    def vendors(self) -> dict[str, ProxiedVendor]:
        return self._app[VENDORS]

    def _headers_of(self, vendor: ProxiedVendor) -> HeaderRules:
        rules = self._header_rules.get(vendor.name)
        if rules is None:
            rules = self._header_rules[vendor.name] = HeaderRules.for_vendor(vendor.plugin)
        return rules

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Decide, forward if allowed and answer; then settle, audit and count."""
        vendor_name = request.match_info["vendor"]
        raw_path = request.raw_path.partition("?")[0]
        facts = _Facts(
            method=request.method.upper(),
            path=raw_path[len(vendor_name) + 1 :],
            vendor=vendor_name if vendor_name in self.vendors else None,
        )
        try:
            try:
                answer = await self._handle(request, vendor_name, facts)
            except StoreUnavailable:
                fault_log.exception("store unavailable")
                answer = self._refuse(
                    facts,
                    503,
                    "store_unavailable",
                    "keybrake's store is unavailable; nothing was forwarded",
                )
            except web.HTTPRequestEntityTooLarge:
                answer = self._refuse(
                    facts, 413, "body_too_large", "request body is larger than the server accepts"
                )
            except Exception as exc:
                if isinstance(
                    exc, (aiohttp.ClientPayloadError, ConnectionError)
                ) and deadlines.client_gone(request):
                    if facts.decision == "error":  # nothing was decided, nothing forwarded
                        facts.decision, facts.status = "client_closed", 499
                    raise  # the client went away while sending: nobody to answer
                # Anything else, a ConnectionError of a store's or forwarder's included, is a
                # fault of ours, answered and logged as one.
                fault_log.exception("unexpected error on %s %s", facts.method, redact(raw_path))
                answer = Answer.error(
                    500, "internal_error", "unexpected server error", vendor=facts.vendor
                )
            if self._durable and facts.key is not None:
                answer = await self._audit_durably(facts, answer)
            # Send the answer now: what follows (settling, audit, metrics) is ours alone.
            response = web.Response(
                status=answer.status, body=answer.body, headers=CIMultiDict(answer.headers)
            )
            if not await deadlines.send_answer(request, response):
                log.info(
                    "%s %s: the client didn't take its answer (%s); connection dropped",
                    facts.method,
                    redact(raw_path),
                    facts.status,
                )
            return response
        finally:
            if facts.after_answer is not None:
                # Never suspends (a batching ledger only queues), so it runs even when
                # the handler is being cancelled.
                await facts.after_answer()
            self._record(facts)

    async def _audit_durably(self, facts: _Facts, answer: Answer) -> Answer:
        """Commit the request's audit entry before its answer goes: ``answer``, or ``503
        audit_unavailable`` if the entry can't be written (then the vendor may have acted:
        the entry records the vendor's answer, so it is written once that has come)."""
        if facts.after_answer is not None:
            # Settled first, so that the entry says what was counted; a batching ledger
            # commits the settlement and the entry together.
            settle, facts.after_answer = facts.after_answer, None
            await settle()
        facts.audited = True
        try:
            await self._app[LEDGER].commit_audit(self._entry(facts))
        except StoreUnavailable:
            fault_log.exception("audit entry not written: answering 503 audit_unavailable")
            facts.audited = False  # this refusal's own entry waits in the audit log's queue
            if facts.decision == "allowed":
                detail = f"; {facts.vendor} did receive the request and answered {facts.status}"
            elif facts.decision in ("upstream_timeout", "upstream_unavailable"):
                detail = ""  # it may have reached the vendor
            else:
                detail = "; nothing was forwarded"
            return self._refuse(
                facts,
                503,
                "audit_unavailable",
                "keybrake could not write this request's audit entry, so it withholds the"
                " answer" + detail,
            )
        return answer

    def _refuse(
        self,
        facts: _Facts,
        status: int,
        code: str,
        message: str,
        **extra: Any,
    ) -> Answer:
        facts.decision, facts.status = code, status
        return Answer.error(status, code, message, vendor=facts.vendor, **extra)

    async def _handle(self, request: web.Request, vendor_name: str, facts: _Facts) -> Answer:
        vendors = self.vendors
        vendor = vendors.get(vendor_name)
        if vendor is None:
            return self._refuse(
                facts, 404, "unknown_vendor", f"no such vendor; use one of {sorted(vendors)}"
            )
        try:
            decided = await self._decide(request, vendor, facts)
        except _Refused as refused:
            return refused.answer
        except BadRequest as exc:
            return self._refuse(facts, 400, "bad_request", exc.message)
        return await self._price_and_forward(decided, facts)

    async def _decide(self, request: web.Request, vendor: ProxiedVendor, facts: _Facts) -> _Decided:
        """Everything checked before pricing: headers, key, path, allowlist, account, body.

        Raises:
            _Refused: the answer to give instead.
            BadRequest: the request can be read more than one way.
        """

        def refuse(status: int, code: str, message: str, **extra: Any) -> _Refused:
            return _Refused(self._refuse(facts, status, code, message, **extra))

        rules = self._headers_of(vendor)
        check_headers(request.raw_headers, rules.single)
        headers = request.headers
        token = _vault_token(headers.get("Authorization", ""))
        if token is None:
            raise refuse(401, "invalid_key", "missing vault key (Authorization: Bearer ...)")
        key = await self._app[STORE].get_key_by_token_hash(hash_token(token))
        if key is None:
            raise refuse(401, "invalid_key", "no such vault key")
        facts.key = key
        inactive = self._inactive(facts, key)
        if inactive is not None:
            raise _Refused(inactive)
        if key.vendor != vendor.name:
            raise refuse(
                403, "vendor_mismatch", f"vault key {key.id} is for {key.vendor}, not {vendor.name}"
            )

        try:
            segments = _normalise(facts.path)
        except UnsafePathError as exc:
            raise BadRequest(f"refused path: {exc}") from None
        method = facts.method
        if not _allowed(key.allowed_endpoints, method, segments):
            attempted = f"{method} {facts.path}"
            raise refuse(
                403,
                "endpoint_not_allowed",
                f"{attempted} is not in this key's allowed endpoints",
                attempted=attempted,
                allowed_endpoints=list(key.allowed_endpoints),
            )
        extra = self._account_headers(vendor, key, headers, refuse)
        if vendor.authorization is None:
            raise refuse(
                503, "vendor_not_configured", f"the server has no {vendor.name} credentials"
            )

        query = canonical_query(request.raw_path.partition("?")[2])
        if "Content-Encoding" in headers:
            # aiohttp would decode it: one more reading of the body, and a decompressor for
            # the client to aim at. Vendors take plain forms and JSON.
            raise BadRequest("a compressed request body is not accepted (Content-Encoding)")
        try:
            body = await deadlines.read_body(request)
        except web.HTTPRequestTimeout as exc:
            raise refuse(408, "request_timeout", exc.reason) from None
        except (HttpProcessingError, web.RequestPayloadError):
            raise BadRequest("the request body can't be read") from None
        if vendor.plugin.body_format == "json":
            body, content_type = canonical_json(headers.get("Content-Type", ""), body), JSON
            if body == b"{}" and method in ("GET", "HEAD"):
                body = b""  # an empty object is no body (Resend's SDK sends one on reads)
        else:
            body, content_type = canonical_form(headers.get("Content-Type", ""), body), FORM
        if body and method in ("GET", "HEAD"):
            raise BadRequest(f"a {method} request has no body")
        if body:
            extra["Content-Type"] = content_type
        return _Decided(
            vendor=vendor,
            key=key,
            request=VendorRequest(
                method=method,
                segments=segments,
                query=query,
                content_type=content_type if body else "",
                body=body,
            ),
            headers=forwarded_headers(
                headers, rules.forwarded, authorization=vendor.authorization, extra=extra
            ),
            idempotency_key=headers.get("Idempotency-Key"),
        )

    def _inactive(self, facts: _Facts, key: KeyRecord) -> Answer | None:
        """The refusal of a revoked or expired key, if it is one."""
        status = key.status(now_micros())
        if status == "revoked":
            return self._refuse(facts, 401, "key_revoked", f"vault key {key.id} was revoked")
        if status == "expired":
            return self._refuse(facts, 401, "key_expired", f"vault key {key.id} has expired")
        return None

    @staticmethod
    def _account_headers(
        vendor: ProxiedVendor,
        key: KeyRecord,
        headers: Mapping[str, str],
        refuse: Callable[..., _Refused],
    ) -> dict[str, str]:
        """The key's account scope, for a vendor with accounts (Stripe's merchant scope,
        CONTRACT §3): the headers that act on the key's account.

        Raises:
            _Refused: the vendor's refusal (403 ``account_not_allowed``) of a request naming
                another account.
        """
        scope = vendor.plugin.scope
        if scope is None:
            return {}
        try:
            return dict(scope(key.id, key.stripe_account, headers))
        except PricingRefusal as refusal:
            raise refuse(refusal.status, refusal.code, refusal.message) from None

    async def _price_and_forward(self, decided: _Decided, facts: _Facts) -> Answer:
        app = self._app
        vendor, key, vendor_request = decided.vendor, decided.key, decided.request
        lookup_headers = [(k, v) for k, v in decided.headers if k in vendor.plugin.lookup_headers]
        ledger = app[LEDGER]
        lookup: Callable[[str], Awaitable[Mapping[str, Any] | None]]
        lookup = functools.partial(_lookup, app[FORWARDER], vendor, lookup_headers)
        admission = _AdmitOnLookup(self, facts, key, lookup) if key.braked else None
        try:
            quote = await vendor.pricer.quote(
                vendor_request,
                lookup if admission is None else admission.lookup,
                functools.partial(ledger.counted, key.id),
            )
        except _Refused as braked_refusal:
            return braked_refusal.answer
        except PricingRefusal as refusal:
            return self._refuse(facts, refusal.status, refusal.code, refusal.message)
        except _UpstreamDown:
            return self._refuse(
                facts, 502, "upstream_unavailable", f"can't reach {vendor.name} to price this"
            )
        # Already admitted (the price needed a look-up): the reservation doesn't admit again.
        braked = key.braked and not (admission is not None and admission.admitted)
        # What goes out: the pricer may rewrite the path or body to make its bound hold.
        segments = quote.segments if quote.segments is not None else vendor_request.segments
        path = "/" + "/".join(segments)
        body = quote.body if quote.body is not None else vendor_request.body

        reservation: Reservation | None = None
        if quote.micros > 0:
            now = now_micros()
            idem_hash = None
            if vendor.honours_idempotency and decided.idempotency_key:
                # A replay is free only if it is the same request: a new body under an old
                # key is priced as what it is (the vendor refuses it, which releases it).
                same = fingerprint(
                    vendor_request.method, path, vendor_request.query, body, decided.headers
                )
                idem_hash = hashlib.sha256(
                    f"{key.id}\0{decided.idempotency_key}\0{same}".encode()
                ).hexdigest()
            reservation = Reservation(
                id=self._ids.next(),
                key_id=key.id,
                day=utc_day(now),
                amount=quote.micros,
                idem_hash=idem_hash,
                budget_id=key.budget_id,
                braked=braked,
            )
            result, spend = await ledger.reserve(
                reservation, now, replay_after=now - IDEMPOTENCY_WINDOW_MICROS
            )
            refused = self._braked(facts, key, result, spend, quote.micros)
            if refused is not None:
                return refused
            if result is ReserveResult.CAP_EXHAUSTED:
                return self._refuse(
                    facts,
                    429,
                    "cap_exhausted",
                    f"this request (${format_usd(quote.micros)}) would take vault key {key.id}"
                    f" past its daily cap of ${format_usd(key.cap_micros)}",
                    daily_usd_cap=format_usd(key.cap_micros),
                    spent_today_usd=format_usd(spend.spent + spend.reserved),
                    attempted_usd=format_usd(quote.micros),
                )
            if result is ReserveResult.REPLAY:
                reservation = None  # the vendor replays its first answer; counted once
            else:
                facts.reserved = quote.micros
        elif braked:
            result, spend = await ledger.admit(key.id, now_micros())
            refused = self._braked(facts, key, result, spend, 0)
            if refused is not None:
                return refused
        elif not key.braked:
            # A free request of a key without brakes touches no ledger: look the key up
            # again now that its body has come (a serving SQLite store answers from its
            # cache, which a revocation clears), so a key revoked meanwhile sends nothing.
            fresh = await app[STORE].get_key_by_token_hash(key.token_hash)
            refused = self._inactive(facts, fresh if fresh is not None else key)
            if refused is not None:
                return refused

        query = vendor_request.query
        target = vendor.origin.prefix + path + ("?" + query if query else "")
        return await self._forward(decided, facts, target, body, quote, reservation)

    def _braked(
        self, facts: _Facts, key: KeyRecord, result: ReserveResult, spend: SpendState, micros: int
    ) -> Answer | None:
        """The answer to a request refused by a brake other than the key's cap, or because
        its key was revoked or expired since it was looked up, if it was."""
        if result is ReserveResult.KEY_REVOKED:
            return self._refuse(facts, 401, "key_revoked", f"vault key {key.id} was revoked")
        if result is ReserveResult.KEY_EXPIRED:
            return self._refuse(facts, 401, "key_expired", f"vault key {key.id} has expired")
        if result is ReserveResult.USES_EXHAUSTED:
            return self._refuse(
                facts,
                429,
                "uses_exhausted",
                f"vault key {key.id} has made its {key.max_requests} requests",
                max_requests=key.max_requests,
            )
        if result is ReserveResult.RATE_LIMITED:
            seconds = max(1, -(-spend.retry_after // 1_000_000))  # whole seconds, rounded up
            return self._refuse(
                facts,
                429,
                "rate_limited",
                f"vault key {key.id} is over its rate limit of {key.rate_limit};"
                f" retry in {seconds}s",
                headers={"Retry-After": str(seconds)},
                rate_limit=key.rate_limit,
                retry_after=seconds,
            )
        if result is ReserveResult.BUDGET_EXHAUSTED:
            return self._refuse(
                facts,
                429,
                "budget_exhausted",
                f"this request (${format_usd(micros)}) would take budget {key.budget_id}"
                f" past its daily cap of ${format_usd(spend.budget_cap)}",
                budget=key.budget_id,
                budget_daily_usd_cap=format_usd(spend.budget_cap),
                budget_spent_today_usd=format_usd(spend.budget_spent),
                attempted_usd=format_usd(micros),
            )
        return None

    async def _forward(
        self,
        decided: _Decided,
        facts: _Facts,
        target: str,
        body: bytes,
        quote: Quote,
        reservation: Reservation | None,
    ) -> Answer:
        vendor, vendor_request = decided.vendor, decided.request
        refuse = self._refuse
        ledger = self._app[LEDGER]
        kept = Settlement(quote.micros)
        started = time.perf_counter()
        try:
            upstream = await self._app[FORWARDER].request(
                vendor.origin, vendor_request.method, target, decided.headers, body
            )
        except UpstreamUnreachable:
            # Nothing reached the vendor: the reservation can safely go back.
            await ledger.finish(reservation, None)
            return refuse(facts, 502, "upstream_unavailable", f"can't reach {vendor.name}")
        except UpstreamError as exc:
            # The request may have reached the vendor: keep it counted.
            await ledger.finish(reservation, kept)
            facts.settled = kept.actual if reservation else 0
            timeout = isinstance(exc, UpstreamTimeout)
            code = "upstream_timeout" if timeout else "upstream_unavailable"
            return refuse(
                facts, 504 if timeout else 502, code, f"{vendor.name} did not answer in full"
            )
        except asyncio.CancelledError:
            await ledger.finish(reservation, kept)
            facts.decision, facts.status = "cancelled", 499
            facts.settled = kept.actual if reservation else 0
            raise
        facts.upstream_seconds = time.perf_counter() - started

        request_id = next(
            filter(None, map(upstream.header, vendor.plugin.request_id_headers)), None
        )
        facts.decision, facts.status, facts.vendor_request_id = (
            "allowed",
            upstream.status,
            request_id,
        )
        if 200 <= upstream.status < 300:
            settle = functools.partial(
                _settle_success,
                ledger,
                vendor,
                vendor_request,
                quote,
                upstream.body,
                reservation,
                facts,
            )
            if ledger.batches:
                # Queued and written after the answer anyway: work out what it cost after
                # the answer has gone back, too.
                facts.after_answer = settle
            else:
                await settle()
        elif 400 <= upstream.status < 500:
            await ledger.finish(reservation, None)  # the vendor refused: nothing was spent
        else:
            facts.settled = quote.micros if reservation is not None else 0
            await ledger.finish(reservation, Settlement(quote.micros, True, request_id))
        return Answer(
            upstream.status,
            [
                (name, value)
                for name, value in upstream.headers
                if name.lower() not in _DROP_RESPONSE_HEADERS
            ],
            upstream.body,
        )

    @staticmethod
    def _entry(facts: _Facts) -> AuditEntry:
        """The audit entry of a request made with one of our keys (``facts.key``)."""
        key = facts.key
        assert key is not None
        return AuditEntry(
            at=now_micros(),
            tenant=key.tenant,
            key_id=key.id,
            label=key.label,
            vendor=facts.vendor,
            method=facts.method,
            path=facts.path[:MAX_AUDIT_PATH],
            decision=facts.decision,
            status=facts.status,
            reserved=facts.reserved,
            settled=facts.settled,
            upstream_ms=None
            if facts.upstream_seconds is None
            else round(facts.upstream_seconds * 1000, 3),
            vendor_request_id=facts.vendor_request_id,
        )

    def _record(self, facts: _Facts) -> None:
        app = self._app
        key = facts.key
        vendor = facts.vendor or "unknown"
        metrics = app[METRICS]
        metrics.decision(vendor, facts.decision)
        if facts.settled:
            metrics.spend(vendor, facts.settled)
        if facts.upstream_seconds is not None:
            metrics.upstream_latency(vendor, facts.upstream_seconds)
        path = facts.path[:MAX_AUDIT_PATH]
        label = None if key is None else key.label
        # A request with nobody's key is counted in the metrics above, never a row each (a
        # flood of them would fill the disk); the log line below still says it.
        if key is not None and not facts.audited:
            app[AUDIT].record(self._entry(facts))
        if log.isEnabledFor(logging.INFO):
            path, label = redact(path), None if label is None else redact(label)
            log.info(
                "%s %s %s %s key=%s label=%r status=%d settled=%s",
                facts.decision,
                vendor,
                facts.method,
                path,
                None if key is None else key.id,
                label,
                facts.status,
                format_usd(facts.settled),
            )


def add_routes(app: web.Application, config: ServerConfig) -> None:
    app[VENDORS] = vendors_from_config(config)
    handler = ProxyHandler(app, config)
    app.router.add_route("*", "/{vendor:(?!v1/)[^/]+}/{tail:[\\s\\S]*}", handler.handle)
