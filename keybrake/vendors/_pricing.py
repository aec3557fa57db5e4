"""What every vendor's pricing rules share: the request they see and the answers they give.

A vendor's *pricer* is asked three things by the proxy:

1. :meth:`Pricer.quote`, before forwarding: the most this request can cost (an upper bound,
   in USD micro-dollars), possibly with a rewritten path or body that makes the bound hold
   (Twilio's ``TimeLimit``). It may look things up at the vendor first (a refund without an
   amount is bounded by its charge). It raises :class:`PricingRefusal` for a request that must
   not be forwarded.
2. :meth:`Pricer.outcome`, after a 2xx: what the request actually cost, or that the estimate
   stands until the vendor reports the price (Twilio reports it late).
3. :meth:`Pricer.reports`, on any 2xx: late prices found in the answer (for example a fetched
   message whose ``price`` is now known), to correct earlier estimates.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import parse_qsl

import attrs

from keybrake._common import EndpointPattern

__all__ = [
    "FREE",
    "MAX_JSON_DEPTH",
    "Counted",
    "Lookup",
    "Outcome",
    "PriceReport",
    "Pricer",
    "PricingRefusal",
    "Quote",
    "VendorRequest",
    "decimal_setting",
    "nothing_counted",
    "parse_form",
    "parse_json",
    "read_strict_json",
    "usd_to_micros",
]


class PricingRefusal(Exception):
    """A request the proxy must refuse before forwarding, with the HTTP answer to give."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@attrs.frozen
class VendorRequest:
    """A request as the pricer sees it; the path is already normalised into segments."""

    method: str
    segments: tuple[str, ...]
    query: str
    content_type: str
    body: bytes

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments)


@attrs.frozen
class Quote:
    """The most a request may cost, and what to forward instead, if anything."""

    micros: int
    body: bytes | None = None
    segments: tuple[str, ...] | None = None


FREE = Quote(0)


@attrs.frozen
class Outcome:
    """What a forwarded request cost: ``final`` False means an estimate awaiting a report."""

    micros: int
    final: bool = True
    object_id: str | None = None


@attrs.frozen
class PriceReport:
    """A vendor object's price, learnt after the fact."""

    object_id: str
    micros: int


#: GET a vendor path with the real credential: the JSON object, or None if not found.
Lookup = Callable[[str], Awaitable[Mapping[str, Any] | None]]
#: What this vault key has already counted for a vendor object (by its id, e.g. ``pi_...``):
#: the micro-dollars of its reservations that were not released, settled or still pending.
Counted = Callable[[str], Awaitable[int]]


async def nothing_counted(object_id: str) -> int:
    """A :data:`Counted` for callers with no ledger (tests, tools): nothing was counted."""
    return 0


class Pricer(Protocol):
    """A vendor's pricing rules, as the proxy asks them (see the module's description)."""

    name: str

    async def quote(
        self, request: VendorRequest, lookup: Lookup, counted: Counted = nothing_counted
    ) -> Quote: ...

    def outcome(self, request: VendorRequest, quote: Quote, body: bytes) -> Outcome: ...

    def reports(self, request: VendorRequest, body: bytes) -> list[PriceReport]: ...


def usd_to_micros(amount: Decimal) -> int:
    """USD to micro-dollars, rounded up (a bound must never undercount)."""
    return math.ceil(amount * 1_000_000)


def parse_form(request: VendorRequest) -> list[tuple[str, str]]:
    """The request's form body as pairs.

    Raises:
        PricingRefusal: 400 ``bad_request`` for a body that is not a valid UTF-8 form, or a
            form sent with another content type.
    """
    if not request.body:
        return []
    if not request.content_type.startswith("application/x-www-form-urlencoded"):
        raise PricingRefusal(400, "bad_request", "request body must be form-encoded")
    try:
        text = request.body.decode("utf-8")
        if "%" in text or "+" in text:
            return parse_qsl(text, keep_blank_values=True, strict_parsing=True)
        return _split_form(text)
    except (UnicodeDecodeError, ValueError):
        raise PricingRefusal(400, "bad_request", "request body is not a valid form") from None


def parse_json(request: VendorRequest) -> Any:
    """The request's JSON body (``None`` for no body), read strictly.

    The proxy has already re-encoded the body from one strict reading, so this fails only
    for a pricer called on a request the proxy didn't shape (tests, tools).

    Raises:
        PricingRefusal: 400 ``bad_request`` for a body that is not strict UTF-8 JSON sent as
            ``application/json`` (see :func:`read_strict_json`).
    """
    if not request.body:
        return None
    if request.content_type.partition(";")[0].strip().lower() != "application/json":
        raise PricingRefusal(400, "bad_request", "request body must be sent as application/json")
    try:
        return read_strict_json(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PricingRefusal(400, "bad_request", f"request body is not valid JSON: {exc}") from None


#: Deepest nesting of a JSON body (a deeper one is refused, never recursed into).
MAX_JSON_DEPTH = 32
#: Keys a JavaScript upstream may take for its objects' own machinery.
_PROTOTYPE_KEYS = frozenset({"__proto__", "constructor", "prototype"})
#: Largest integer a JavaScript upstream reads exactly (``Number.MAX_SAFE_INTEGER``).
MAX_SAFE_INTEGER = 2**53 - 1
#: A ``\u`` escape of a UTF-16 surrogate, the one way a lone surrogate gets into a string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def read_strict_json(text: str) -> Any:
    """JSON with one reading only: the proxy reads a body with it before pricing, and the
    pricers read what the proxy re-encoded from that reading.

    Raises:
        ValueError: not JSON; an object that repeats a key (a reader may keep either) or
            holds ``__proto__``, ``constructor`` or ``prototype`` (a JavaScript upstream
            may read them as its objects' machinery); ``NaN`` or ``Infinity``; a number out
            of a float's range, or an integer a JavaScript upstream can't read exactly
            (beyond :data:`MAX_SAFE_INTEGER`); a string with a lone UTF-16 surrogate (two
            such keys differ here and may be one key to an upstream that replaces them);
            nesting deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_safe_int,
        )
    except RecursionError:
        raise ValueError("it nests too deep") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"it nests deeper than {MAX_JSON_DEPTH}")
    if _SURROGATE_ESCAPE.search(text) is not None:
        # Paired surrogates (an emoji written as two escapes) are one character once read;
        # a lone one is left in the string, and can't be written as UTF-8.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate") from None
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"key {name[:40]!r} is repeated")
        if name in _PROTOTYPE_KEYS:
            raise ValueError(f"key {name!r} is not accepted")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number is out of range")
    return value


def _safe_int(text: str) -> int:
    # Checked by length before it is converted: a long run of digits costs quadratic time.
    if len(text) > 17 or abs(value := int(text)) > MAX_SAFE_INTEGER:
        raise ValueError("an integer is beyond what every JSON reader reads exactly")
    return value


def _depth(value: Any) -> int:
    """How deep ``value`` nests, without recursing past :data:`MAX_JSON_DEPTH`."""
    deepest, level = 0, [value]
    while level:
        deepest += 1
        if deepest > MAX_JSON_DEPTH:
            break
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return deepest


def _split_form(text: str) -> list[tuple[str, str]]:
    """``parse_qsl(text, keep_blank_values=True, strict_parsing=True)`` for a form with
    nothing to unquote (no ``%``, no ``+``): the common case, in a fraction of the time.

    Raises:
        ValueError: a field without ``=``, as ``parse_qsl`` does.
    """
    pairs: list[tuple[str, str]] = []
    if not text:
        return pairs
    for field in text.split("&"):
        name, eq, value = field.partition("=")
        if not eq:
            raise ValueError(f"bad query field: {field!r}")
        pairs.append((name, value))
    return pairs


def single_values(pairs: Sequence[tuple[str, str]], repeatable: frozenset[str]) -> dict[str, str]:
    """Pairs as a dict, refusing a repeated name unless it may repeat (or ends in ``[]``).

    A repeated scalar could be read one way by us and another by the vendor.

    Raises:
        PricingRefusal: 400 ``bad_request`` for a repeated parameter.
    """
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form and name not in repeatable and not name.endswith("[]"):
            raise PricingRefusal(400, "bad_request", f"parameter {name!r} is repeated")
        form[name] = value
    return form


def decimal_setting(value: Any, where: str) -> Decimal:
    """A non-negative decimal from a pricing file (strings or JSON numbers read as decimals).

    Raises:
        ValueError: not a non-negative decimal.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{where}: expected a decimal string, got {value!r}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{where}: expected a decimal string, got {value!r}") from None
    if not result.is_finite() or result < 0:
        raise ValueError(f"{where}: expected a non-negative decimal, got {value!r}")
    return result


def endpoint_patterns(values: Any, where: str) -> tuple[EndpointPattern, ...]:
    """Parse a list of endpoint patterns from a pricing file.

    Raises:
        ValueError: not a list of valid patterns.
    """
    if not isinstance(values, list):
        raise ValueError(f"{where}: expected a list of endpoint patterns")
    return tuple(EndpointPattern.parse(v) for v in values)
