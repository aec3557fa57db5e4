"""The proxy's smaller pieces: reading the vault key, matching the allowlist, reservation
ids, pricing look-ups at the vendor and settling an answer."""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from keybrake._common import EndpointPattern, normalise_path
from keybrake.server.http.errors import error_body
from keybrake.server.http.upstream import Forwarder, UpstreamError
from keybrake.server.ledger.ledger import Ledger
from keybrake.server.proxy.vendors import ProxiedVendor
from keybrake.server.stores.base import (
    KeyRecord,
    Reservation,
    Settlement,
)
from keybrake.server.util import now_micros
from keybrake.vendors._pricing import Quote, VendorRequest

#: Seconds a pricing look-up at the vendor may take.
LOOKUP_TIMEOUT = 10.0


#: Longest path kept in an audit entry.
MAX_AUDIT_PATH = 256


@functools.lru_cache(maxsize=4096)
def _compile(patterns: tuple[str, ...]) -> tuple[EndpointPattern, ...]:
    return tuple(EndpointPattern.parse(p) for p in patterns)


#: The same paths come again and again; a path that can't be normalised raises every time.
_normalise = functools.lru_cache(maxsize=4096)(normalise_path)


@functools.lru_cache(maxsize=16384)
def _allowed(patterns: tuple[str, ...], method: str, segments: tuple[str, ...]) -> bool:
    return any(p.matches(method, segments) for p in _compile(patterns))


class _ReservationIds:
    """Unique reservation ids that sort by creation: ``rsv_`` + start time + random + count.

    Ids that grow keep inserts at the end of the ledger's index, and need no system call
    each (unlike ``secrets``); the random part keeps them apart across processes.
    """

    def __init__(self) -> None:
        self._prefix = f"rsv_{now_micros():014x}{secrets.token_hex(4)}"
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):010x}"


def _vault_token(header: str) -> str | None:
    """The vault key in an ``Authorization`` header (Bearer, or either half of Basic)."""
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


@attrs.frozen
class Answer:
    """What the proxy sends back."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def error(
        cls, status: int, code: str, message: str, *, vendor: str | None, **extra: Any
    ) -> Answer:
        """The same JSON error :func:`~keybrake.server.http.errors.error_response` builds."""
        body, headers = error_body(status, code, message, vendor=vendor, **extra)
        return cls(
            status,
            [("Content-Type", "application/json; charset=utf-8"), *headers.items()],
            json.dumps(body).encode(),
        )


@attrs.define
class _Facts:
    """What the audit log, the metrics and the log line say about one request."""

    method: str
    path: str
    vendor: str | None
    key: KeyRecord | None = None
    decision: str = "error"
    status: int = 500
    reserved: int = 0
    settled: int = 0
    upstream_seconds: float | None = None
    vendor_request_id: str | None = None
    #: Settles the request; run once its answer has been sent (or has failed to be).
    after_answer: Callable[[], Awaitable[None]] | None = None
    #: The audit entry is written already (durable audit), or will be by the ledger.
    audited: bool = False


class _UpstreamDown(Exception):
    pass


class _Refused(Exception):
    """The policy's answer to a request it won't forward."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


async def _settle_success(
    ledger: Ledger,
    vendor: ProxiedVendor,
    vendor_request: VendorRequest,
    quote: Quote,
    payload: bytes,
    reservation: Reservation | None,
    facts: _Facts,
) -> None:
    """Settle a 2xx at what the vendor says it cost, and correct earlier estimates."""
    outcome = vendor.pricer.outcome(vendor_request, quote, payload)
    if reservation is not None:
        facts.settled = outcome.micros
        settlement = Settlement(
            outcome.micros, outcome.final, facts.vendor_request_id, outcome.object_id
        )
        await ledger.finish(reservation, settlement)
    for report in vendor.pricer.reports(vendor_request, payload):
        await ledger.correct_price(report.object_id, report.micros)


async def _lookup(
    forwarder: Forwarder,
    vendor: ProxiedVendor,
    headers: list[tuple[str, str]],
    path: str,
) -> Mapping[str, Any] | None:
    """GET a vendor object with the real credential, to bound a request's price: through the
    same forwarder as the requests themselves."""
    assert vendor.authorization is not None
    try:
        answer = await forwarder.request(
            vendor.origin,
            "GET",
            vendor.origin.prefix + path,
            [*headers, ("Authorization", vendor.authorization)],
            b"",
            timeout=LOOKUP_TIMEOUT,
        )
    except UpstreamError as exc:
        raise _UpstreamDown(f"can't reach {vendor.name}") from exc
    if answer.status == 429 or answer.status >= 500:
        raise _UpstreamDown(f"{vendor.name} answered {answer.status}")
    if answer.status != 200:
        return None  # not found (or not ours to see): the pricer decides
    try:
        data = json.loads(answer.body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
