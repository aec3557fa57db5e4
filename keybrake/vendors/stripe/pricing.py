"""What a Stripe request can cost, decided before it is forwarded.

Every request is one of three things:

- **free**: reads (``GET``), deletes, writes to objects that move no money (customers,
  payment methods, setup intents, products, prices, metadata updates), and confirming,
  capturing or cancelling a payment intent or charge, whose amount was reserved when it was
  created; plus whatever the operator marks free;
- **priced**: creating payment intents, charges, payouts, transfers, refunds and invoice
  items, and updating a payment intent's ``amount``. The bound is the amount, converted to
  USD at the configured (upper-bound) rate and rounded up; a refund without an amount is
  bounded by what is left to refund on its charge or payment intent, looked up first;
- **unpriced**: any other ``POST``, refused with 403 ``unpriced_endpoint`` because nothing
  bounds what it may move.

After a 2xx, the spend is settled from the amount and currency in Stripe's answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote as urlquote

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
)

__all__ = ["DEFAULT_CURRENCIES", "MAX_AMOUNT", "StripePricer", "StripePricing"]

#: ISO currency → (minor-unit exponent, USD per major unit, as an upper bound).
DEFAULT_CURRENCIES: Mapping[str, tuple[int, Decimal]] = {
    "usd": (2, Decimal("1")),
    "eur": (2, Decimal("1.20")),
    "gbp": (2, Decimal("1.40")),
    "chf": (2, Decimal("1.30")),
    "cad": (2, Decimal("0.80")),
    "aud": (2, Decimal("0.75")),
    "nzd": (2, Decimal("0.70")),
    "sek": (2, Decimal("0.11")),
    "nok": (2, Decimal("0.11")),
    "dkk": (2, Decimal("0.16")),
    "pln": (2, Decimal("0.30")),
    "inr": (2, Decimal("0.013")),
    "mxn": (2, Decimal("0.07")),
    "brl": (2, Decimal("0.22")),
    "sgd": (2, Decimal("0.80")),
    "hkd": (2, Decimal("0.14")),
    "jpy": (0, Decimal("0.0080")),
    "krw": (0, Decimal("0.00080")),
    "vnd": (0, Decimal("0.000045")),
    "clp": (0, Decimal("0.0012")),
    "bhd": (3, Decimal("2.70")),
    "kwd": (3, Decimal("3.40")),
    "omr": (3, Decimal("2.70")),
    "jod": (3, Decimal("1.45")),
    "tnd": (3, Decimal("0.35")),
}

#: The largest amount (in minor units) we accept in one request.
MAX_AMOUNT = 99_999_999_999


def _shape(text: str) -> tuple[str, ...]:
    return tuple(text.strip("/").split("/"))


# Requests that create a money-moving object whose amount and currency are in the form.
_AMOUNT_CREATES = frozenset(
    _shape(p) for p in ("/v1/payment_intents", "/v1/charges", "/v1/payouts", "/v1/transfers")
)
_REFUNDS = _shape("/v1/refunds")
_INVOICE_ITEMS = _shape("/v1/invoiceitems")
_PAYMENT_INTENT = _shape("/v1/payment_intents/*")

# POSTs that can't move money (or whose money was reserved when the object was created).
_FREE_POSTS: tuple[tuple[str, ...], ...] = tuple(
    _shape(p)
    for p in (
        "/v1/customers",
        "/v1/customers/*",
        "/v1/customers/*/sources",
        "/v1/payment_methods",
        "/v1/payment_methods/*",
        "/v1/payment_methods/*/attach",
        "/v1/payment_methods/*/detach",
        "/v1/payment_intents/*/confirm",
        "/v1/payment_intents/*/capture",
        "/v1/payment_intents/*/cancel",
        "/v1/charges/*/capture",
        "/v1/setup_intents",
        "/v1/setup_intents/*",
        "/v1/setup_intents/*/confirm",
        "/v1/setup_intents/*/cancel",
        "/v1/products",
        "/v1/products/*",
        "/v1/prices",
        "/v1/prices/*",
        "/v1/refunds/*",
    )
)
# Updates that are free unless they carry one of these fields.
_UPDATES_WITH_MONEY: Mapping[tuple[str, ...], frozenset[str]] = {
    _PAYMENT_INTENT: frozenset({"amount"}),
    _shape("/v1/charges/*"): frozenset(),
}


def _matches(shape: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    if len(shape) != len(segments):
        return False
    return all(p == "*" or p == s for p, s in zip(shape, segments, strict=True))


@attrs.frozen(kw_only=True)
class StripePricing:
    """The operator's Stripe price settings."""

    currencies: Mapping[str, tuple[int, Decimal]] = attrs.field(
        factory=lambda: dict(DEFAULT_CURRENCIES)
    )
    free_endpoints: tuple[EndpointPattern, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> StripePricing:
        """Read the ``"stripe"`` section of a pricing file.

        ``currencies`` maps a currency to ``{"usd_rate": "1.10", "exponent": 2}`` (exponent
        optional for known currencies) and merges into the defaults; ``free_endpoints`` lists
        patterns the operator declares free.

        Raises:
            ValueError: a malformed section.
        """
        unknown = set(data) - {"currencies", "free_endpoints"}
        if unknown:
            raise ValueError(f"stripe: unknown settings {sorted(unknown)}")
        currencies = dict(DEFAULT_CURRENCIES)
        for code, entry in dict(data.get("currencies") or {}).items():
            where = f"stripe.currencies.{code}"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: expected {{'usd_rate': ..., 'exponent': ...}}")
            code = str(code).lower()
            exponent = entry.get("exponent", currencies.get(code, (None,))[0])
            if exponent not in (0, 2, 3):
                raise ValueError(f"{where}: exponent must be 0, 2 or 3")
            currencies[code] = (int(exponent), decimal_setting(entry.get("usd_rate"), where))
        free = endpoint_patterns(data.get("free_endpoints", []), "stripe.free_endpoints")
        return cls(currencies=currencies, free_endpoints=free)


class StripePricer:
    """Stripe's pricing rules, with the operator's settings."""

    name = "stripe"

    def __init__(self, settings: StripePricing | None = None) -> None:
        self.settings = settings or StripePricing()
        # Each rate as an exact fraction micro-dollars per minor unit, numerator/denominator:
        # the conversion is then integer arithmetic, exact for any amount.
        self._fractions: dict[str, tuple[int, int]] = {}
        for code, (exponent, rate) in self.settings.currencies.items():
            numerator, denominator = rate.as_integer_ratio()
            self._fractions[code] = (numerator * 1_000_000, denominator * 10**exponent)

    def to_usd_micros(self, amount: int, currency: str) -> int:
        """An amount in a currency's minor units, in USD micro-dollars, rounded up.

        Raises:
            PricingRefusal: 400 ``unsupported_currency`` for a currency without a rate.
        """
        fraction = self._fractions.get(currency.lower())
        if fraction is None:
            raise PricingRefusal(
                400, "unsupported_currency", f"currency {currency!r} has no USD rate configured"
            )
        numerator, denominator = fraction
        return -(-amount * numerator // denominator)  # rounded up: a bound never undercounts

    async def quote(self, request: VendorRequest, lookup: Lookup) -> Quote:
        """The most the request can cost.

        Raises:
            PricingRefusal: a malformed request (400), an unknown currency (400), or a
                money-moving request nothing bounds (403 ``unpriced_endpoint``).
        """
        method, segments = request.method, request.segments
        if method in ("GET", "HEAD", "DELETE"):
            return FREE
        if method != "POST":
            raise PricingRefusal(403, "unpriced_endpoint", f"{method} is not priced for Stripe")
        if request.query:
            raise PricingRefusal(400, "bad_request", "Stripe POST parameters belong in the body")
        form = single_values(parse_form(request), frozenset())
        if any(p.matches(method, segments) for p in self.settings.free_endpoints):
            return FREE
        if segments in _AMOUNT_CREATES:
            return Quote(self.to_usd_micros(_amount(form, "amount"), _currency(form)))
        if segments == _REFUNDS:
            return Quote(await self._refund_bound(form, lookup))
        if segments == _INVOICE_ITEMS:
            return Quote(self._invoice_item_bound(form))
        for shape, money_fields in _UPDATES_WITH_MONEY.items():
            if _matches(shape, segments):
                if not money_fields & form.keys():
                    return FREE
                # A new amount for an existing intent: bound by the whole new amount.
                intent = await lookup(f"/v1/payment_intents/{urlquote(segments[2], safe='')}")
                currency = form.get("currency") or (intent or {}).get("currency")
                if not isinstance(currency, str):
                    raise PricingRefusal(
                        400, "bad_request", "can't price an update of an unknown payment intent"
                    )
                return Quote(self.to_usd_micros(_amount(form, "amount"), currency))
        if any(_matches(shape, segments) for shape in _FREE_POSTS):
            return FREE
        raise PricingRefusal(
            403,
            "unpriced_endpoint",
            f"POST {request.path} may move money and has no price rule",
        )

    async def _refund_bound(self, form: dict[str, str], lookup: Lookup) -> int:
        if "charge" in form:
            target = await lookup(f"/v1/charges/{urlquote(form['charge'], safe='')}")
        elif "payment_intent" in form:
            target = await lookup(
                f"/v1/payment_intents/{urlquote(form['payment_intent'], safe='')}"
            )
        else:
            raise PricingRefusal(400, "bad_request", "a refund needs 'charge' or 'payment_intent'")
        if target is None or not isinstance(target.get("currency"), str):
            raise PricingRefusal(
                400, "bad_request", "the charge or payment intent to refund is unknown"
            )
        if "amount" in form:
            amount = _amount(form, "amount")
        else:
            total = target.get("amount_captured") or target.get("amount_received")
            if not isinstance(total, int) or total <= 0:
                total = target.get("amount")
            refunded = target.get("amount_refunded")
            if not isinstance(total, int):
                raise PricingRefusal(403, "unpriced_endpoint", "can't bound this refund")
            amount = max(0, total - (refunded if isinstance(refunded, int) else 0))
        return self.to_usd_micros(amount, str(target["currency"]))

    def _invoice_item_bound(self, form: dict[str, str]) -> int:
        currency = _currency(form)
        if "amount" in form:
            return self.to_usd_micros(_amount(form, "amount"), currency)
        if "unit_amount" in form:
            quantity = _amount(form, "quantity") if "quantity" in form else 1
            return self.to_usd_micros(_amount(form, "unit_amount") * quantity, currency)
        raise PricingRefusal(
            403,
            "unpriced_endpoint",
            "an invoice item is priced only with 'amount' or 'unit_amount'",
        )

    def outcome(self, request: VendorRequest, quote: Quote, body: bytes) -> Outcome:
        """Settle from the amount and currency Stripe answered with; else keep the bound."""
        try:
            data = json.loads(body)
        except ValueError:
            return Outcome(quote.micros)
        if not isinstance(data, dict):
            return Outcome(quote.micros)
        amount, currency = data.get("amount"), data.get("currency")
        object_id = data.get("id") if isinstance(data.get("id"), str) else None
        if isinstance(amount, int) and isinstance(currency, str) and amount >= 0:
            try:
                return Outcome(self.to_usd_micros(amount, currency), object_id=object_id)
            except PricingRefusal:
                pass
        return Outcome(quote.micros, object_id=object_id)

    def reports(self, request: VendorRequest, body: bytes) -> list[PriceReport]:
        return []


def _amount(form: dict[str, str], name: str) -> int:
    raw = form.get(name)
    if raw is None:
        raise PricingRefusal(400, "bad_request", f"'{name}' is required")
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= MAX_AMOUNT:
        raise PricingRefusal(400, "bad_request", f"'{name}' must be a positive integer")
    return int(raw)


def _currency(form: dict[str, str]) -> str:
    currency = form.get("currency")
    if not currency:
        raise PricingRefusal(400, "unsupported_currency", "'currency' is required")
    return currency
