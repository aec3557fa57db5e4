"""What a Twilio request can cost, decided before it is sent.

- **Messages** (``POST .../Messages.json``): SMS are priced as segments times the per-segment
  price for the destination; a body that fits GSM-7 makes segments of 160 characters (153
  when split), anything else is UCS-2 with 70 (67) UTF-16 units. With a ``MediaUrl`` the
  message is an MMS, priced per message. A templated message (``ContentSid``) is bounded by
  the largest body Twilio sends (1,600 characters of UCS-2).
- **Calls** (``POST .../Calls.json``): ``TimeLimit`` is forced down to the configured maximum
  and the call is reserved as that many minutes times the per-minute price for the destination.
- Prices are looked up by the longest matching prefix of the destination's digits
  (``"1"`` for the US and Canada, ``"44"`` for the UK, ...), falling back to ``"default"``;
  with no match the request is refused (403 ``unpriced_endpoint``).
- Reads and deletes are free, as are updates of existing messages and calls; any other
  ``POST`` is refused as ``unpriced_endpoint`` unless the operator marks it free.

Twilio reports a message's or call's ``price`` late. The estimate stays counted until a
fetched message or call shows its price; then the spend is corrected to it.

The account SID in a path (``/2010-04-01/Accounts/{sid}/...``) is replaced by the configured
account's, so a vault key can only ever act on that account.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

import attrs

from keybrake._common import EndpointPattern
from keybrake.vendors._pricing import (
    FREE,
    Lookup,
    Outcome,
    PriceReport,
    PricingRefusal,
    Quote,
    VendorRequest,
    decimal_setting,
    endpoint_patterns,
    parse_form,
    single_values,
    usd_to_micros,
)

__all__ = [
    "DEFAULT_CALL_PRICES",
    "DEFAULT_MAX_CALL_MINUTES",
    "DEFAULT_MMS_PRICES",
    "DEFAULT_SMS_PRICES",
    "TwilioPricer",
    "TwilioPricing",
    "sms_segments",
]

#: USD per SMS segment, by destination prefix.
DEFAULT_SMS_PRICES: Mapping[str, Decimal] = {
    "1": Decimal("0.0083"),
    "44": Decimal("0.0524"),
    "default": Decimal("0.20"),
}
#: USD per MMS message, by destination prefix.
DEFAULT_MMS_PRICES: Mapping[str, Decimal] = {
    "1": Decimal("0.0220"),
    "default": Decimal("0.50"),
}
#: USD per call minute, by destination prefix.
DEFAULT_CALL_PRICES: Mapping[str, Decimal] = {
    "1": Decimal("0.0140"),
    "44": Decimal("0.0170"),
    "default": Decimal("0.60"),
}
#: Calls are cut off (``TimeLimit``) after this many minutes.
DEFAULT_MAX_CALL_MINUTES = 10
#: Twilio's limit on a message body, in characters.
MAX_BODY = 1600

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = frozenset("^{}\\[~]|€\f")


def sms_segments(body: str) -> int:
    """How many SMS segments Twilio sends for a body."""
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in body):
        units = sum(2 if ch in _GSM_EXTENDED else 1 for ch in body)
        single, part = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    return 1 if units <= single else math.ceil(units / part)


def _price_table(value: Any, where: str, default: Mapping[str, Decimal]) -> dict[str, Decimal]:
    if value is None:
        return dict(default)
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of destination prefix to USD price")
    return {str(k): decimal_setting(v, f"{where}.{k}") for k, v in value.items()}


@attrs.frozen(kw_only=True)
class TwilioPricing:
    """The operator's Twilio price settings. A table given in a pricing file replaces the
    default table whole, so leaving out ``"default"`` makes unknown destinations refused."""

    sms_usd_per_segment: Mapping[str, Decimal] = attrs.field(
        factory=lambda: dict(DEFAULT_SMS_PRICES)
    )
    mms_usd_per_message: Mapping[str, Decimal] = attrs.field(
        factory=lambda: dict(DEFAULT_MMS_PRICES)
    )
    call_usd_per_minute: Mapping[str, Decimal] = attrs.field(
        factory=lambda: dict(DEFAULT_CALL_PRICES)
    )
    max_call_minutes: int = DEFAULT_MAX_CALL_MINUTES
    free_endpoints: tuple[EndpointPattern, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TwilioPricing:
        """Read the ``"twilio"`` section of a pricing file.

        Raises:
            ValueError: a malformed section.
        """
        known = {
            "sms_usd_per_segment",
            "mms_usd_per_message",
            "call_usd_per_minute",
            "max_call_minutes",
            "free_endpoints",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"twilio: unknown settings {sorted(unknown)}")
        minutes = data.get("max_call_minutes", DEFAULT_MAX_CALL_MINUTES)
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 < minutes <= 240:
            raise ValueError("twilio.max_call_minutes: expected a whole number from 1 to 240")
        return cls(
            sms_usd_per_segment=_price_table(
                data.get("sms_usd_per_segment"), "twilio.sms_usd_per_segment", DEFAULT_SMS_PRICES
            ),
            mms_usd_per_message=_price_table(
                data.get("mms_usd_per_message"), "twilio.mms_usd_per_message", DEFAULT_MMS_PRICES
            ),
            call_usd_per_minute=_price_table(
                data.get("call_usd_per_minute"), "twilio.call_usd_per_minute", DEFAULT_CALL_PRICES
            ),
            max_call_minutes=minutes,
            free_endpoints=endpoint_patterns(
                data.get("free_endpoints", []), "twilio.free_endpoints"
            ),
        )


def _is_account_path(segments: tuple[str, ...]) -> bool:
    return len(segments) >= 3 and segments[0] == "2010-04-01" and segments[1] == "Accounts"


def _resource(segments: tuple[str, ...]) -> tuple[str, ...]:
    """The path below the account: ``("Messages.json",)``, ``("Calls", "CA1.json")``, ..."""
    return segments[3:] if _is_account_path(segments) else ()


class TwilioPricer:
    """Twilio's pricing rules, with the operator's settings and account."""

    name = "twilio"

    def __init__(self, settings: TwilioPricing | None = None, *, account_sid: str | None) -> None:
        self.settings = settings or TwilioPricing()
        self.account_sid = account_sid

    def _price_for(self, table: Mapping[str, Decimal], to: str, what: str) -> Decimal:
        channel, _, address = to.rpartition(":")
        digits = "".join(ch for ch in address if ch.isdigit())
        prefix = f"{channel}:" if channel else ""
        for length in range(len(digits), 0, -1):
            price = table.get(prefix + digits[:length])
            if price is not None:
                return price
        price = table.get(f"{channel}:") if channel else None
        if price is None:
            price = table.get("default")
        if price is None:
            raise PricingRefusal(
                403, "unpriced_endpoint", f"no {what} price is configured for {to!r}"
            )
        return price

    def _rewrite_account(self, segments: tuple[str, ...]) -> tuple[str, ...] | None:
        if self.account_sid is None or not _is_account_path(segments):
            return None
        suffix = ".json" if segments[2].endswith(".json") else ""
        return (*segments[:2], self.account_sid + suffix, *segments[3:])

    async def quote(self, request: VendorRequest, lookup: Lookup) -> Quote:
        """The most the request can cost, with the account SID and ``TimeLimit`` rewritten.

        Raises:
            PricingRefusal: a malformed request (400) or one nothing bounds (403).
        """
        segments = self._rewrite_account(request.segments)
        free = attrs.evolve(FREE, segments=segments)
        method, resource = request.method, _resource(request.segments)
        if method in ("GET", "HEAD", "DELETE"):
            return free
        if method != "POST":
            raise PricingRefusal(403, "unpriced_endpoint", f"{method} is not priced for Twilio")
        pairs = parse_form(request)
        form = single_values(pairs, frozenset({"MediaUrl", "StatusCallbackEvent"}))
        if any(p.matches(method, request.segments) for p in self.settings.free_endpoints):
            return free
        if resource == ("Messages.json",):
            return attrs.evolve(free, micros=self._message_bound(pairs, form))
        if resource == ("Calls.json",):
            micros, body = self._call_bound(pairs, form)
            return attrs.evolve(free, micros=micros, body=body)
        if len(resource) == 2 and resource[0] == "Messages":
            return free  # redacting or cancelling an existing message
        if len(resource) == 2 and resource[0] == "Calls":
            # Updating a live call (new TwiML, hang up) is free, but it may not lift the cap
            # on its length: a TimeLimit given here is cut like one given at creation.
            if "TimeLimit" not in form:
                return free
            return attrs.evolve(free, body=self._time_limited(pairs, form)[1])
        raise PricingRefusal(
            403, "unpriced_endpoint", f"POST {request.path} has no Twilio price rule"
        )

    def _message_bound(self, pairs: list[tuple[str, str]], form: dict[str, str]) -> int:
        to = form.get("To", "")
        if not to:
            raise PricingRefusal(400, "bad_request", "'To' is required")
        if any(name == "MediaUrl" for name, _ in pairs):
            return usd_to_micros(self._price_for(self.settings.mms_usd_per_message, to, "MMS"))
        body = form.get("Body", "")
        segments = (
            sms_segments("\u4e00" * MAX_BODY)
            if form.get("ContentSid")
            else max(1, sms_segments(body))
        )
        price = self._price_for(self.settings.sms_usd_per_segment, to, "SMS")
        return usd_to_micros(price * segments)

    def _call_bound(self, pairs: list[tuple[str, str]], form: dict[str, str]) -> tuple[int, bytes]:
        to = form.get("To", "")
        if not to:
            raise PricingRefusal(400, "bad_request", "'To' is required")
        limit, body = self._time_limited(pairs, form)
        price = self._price_for(self.settings.call_usd_per_minute, to, "call")
        return usd_to_micros(price * math.ceil(limit / 60)), body

    def _time_limited(
        self, pairs: list[tuple[str, str]], form: dict[str, str]
    ) -> tuple[int, bytes]:
        """The call's ``TimeLimit`` cut to the configured maximum, and the body saying so."""
        limit = self.settings.max_call_minutes * 60
        given = form.get("TimeLimit")
        if given is not None:
            if not given.isascii() or not given.isdigit() or int(given) <= 0:
                raise PricingRefusal(400, "bad_request", "'TimeLimit' must be a positive integer")
            limit = min(limit, int(given))
        body = urlencode(
            [(k, v) for k, v in pairs if k != "TimeLimit"] + [("TimeLimit", str(limit))]
        )
        return limit, body.encode()

    def outcome(self, request: VendorRequest, quote: Quote, body: bytes) -> Outcome:
        """The price if Twilio already knows it; else the estimate, awaiting a report."""
        data = _json_object(body)
        sid = data.get("sid") if isinstance(data.get("sid"), str) else None
        price = _usd_price(data)
        if price is not None:
            return Outcome(price, final=True, object_id=sid)
        return Outcome(quote.micros, final=sid is None, object_id=sid)

    def reports(self, request: VendorRequest, body: bytes) -> list[PriceReport]:
        """Prices of messages and calls in a fetched answer (one object or a list page)."""
        if request.method != "GET":
            return []
        data = _json_object(body)
        items: list[Any] = [data]
        for name in ("messages", "calls"):
            if isinstance(data.get(name), list):
                items = data[name]
        reports = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("sid"), str):
                continue
            price = _usd_price(item)
            if price is not None:
                reports.append(PriceReport(item["sid"], price))
        return reports


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _usd_price(data: Mapping[str, Any]) -> int | None:
    """A Twilio ``price`` (negative, as a string, e.g. ``"-0.00750"``) in micro-dollars."""
    price, unit = data.get("price"), data.get("price_unit")
    if price is None or str(unit or "USD").upper() != "USD":
        return None
    try:
        value = abs(Decimal(str(price)))
    except InvalidOperation:
        return None
    return usd_to_micros(value) if value.is_finite() else None
