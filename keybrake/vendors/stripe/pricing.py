"""What a Stripe request can cost, decided before it is forwarded.

Every request is one of three things:

- free: reads (``GET``), deletes, and writes to objects that move no money (customers,
  payment methods, confirming or cancelling an intent whose amount was reserved at creation);
- priced: ``POST /v1/payment_intents`` reserves its ``amount`` converted to USD, rounded up;
- unpriced: any other ``POST``, refused with 403 ``unpriced_endpoint`` because we can't bound
  what it may move.
"""

from __future__ import annotations

import math
from decimal import Decimal
from urllib.parse import parse_qsl

from keybrake.vendors._pricing import PricingRefusal

__all__ = ["CURRENCIES", "price_request", "to_usd_micros"]

#: ISO currency → (minor-unit exponent, USD per major unit, as an upper bound).
CURRENCIES: dict[str, tuple[int, Decimal]] = {
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

#: Stripe's own limit on a single amount (in minor units) is eight digits for most currencies.
MAX_AMOUNT = 99_999_999_999

# POSTs that can't move money (or whose money was reserved when the intent was created).
_FREE_POSTS: tuple[tuple[str, ...], ...] = (
    ("v1", "customers"),
    ("v1", "customers", "*"),
    ("v1", "payment_methods"),
    ("v1", "payment_methods", "*"),
    ("v1", "payment_methods", "*", "attach"),
    ("v1", "payment_methods", "*", "detach"),
    ("v1", "payment_intents", "*", "confirm"),
    ("v1", "payment_intents", "*", "capture"),
    ("v1", "payment_intents", "*", "cancel"),
    ("v1", "setup_intents"),
    ("v1", "setup_intents", "*"),
    ("v1", "setup_intents", "*", "confirm"),
    ("v1", "setup_intents", "*", "cancel"),
)


def _matches(shape: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    if len(shape) != len(segments):
        return False
    return all(p == "*" or p == s for p, s in zip(shape, segments, strict=True))


def to_usd_micros(amount: int, currency: str) -> int:
    """Convert an amount in a currency's minor units to USD micro-dollars, rounded up.

    Raises:
        PricingRefusal: 400 ``unsupported_currency`` for a currency we have no rate for.
    """
    entry = CURRENCIES.get(currency.lower())
    if entry is None:
        raise PricingRefusal(
            400, "unsupported_currency", f"currency {currency!r} has no USD rate configured"
        )
    exponent, rate = entry
    micros = Decimal(amount) * rate * 1_000_000 / (Decimal(10) ** exponent)
    return math.ceil(micros)


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except (UnicodeDecodeError, ValueError):
        raise PricingRefusal(400, "bad_request", "request body is not a valid form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        # A repeated scalar could be read differently by us and by Stripe: refuse it.
        if name in form and not name.endswith("[]"):
            raise PricingRefusal(400, "bad_request", f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _amount(form: dict[str, str], name: str) -> int:
    raw = form.get(name)
    if raw is None:
        raise PricingRefusal(400, "bad_request", f"'{name}' is required")
    if not raw.isascii() or not raw.isdigit() or int(raw) <= 0 or int(raw) > MAX_AMOUNT:
        raise PricingRefusal(400, "bad_request", f"'{name}' must be a positive integer")
    return int(raw)


def price_request(
    method: str, segments: tuple[str, ...], query: str, content_type: str, body: bytes
) -> int:
    """The most a request can cost, in USD micro-dollars (0 when it moves no money).

    Raises:
        PricingRefusal: malformed body (400), unknown currency (400) or a money-moving
            request we can't bound (403 ``unpriced_endpoint``).
    """
    if method in ("GET", "HEAD", "DELETE"):
        return 0
    if method != "POST":
        raise PricingRefusal(403, "unpriced_endpoint", f"{method} is not priced for Stripe")
    if query:
        raise PricingRefusal(400, "bad_request", "Stripe POST parameters belong in the body")
    if body and not content_type.startswith("application/x-www-form-urlencoded"):
        raise PricingRefusal(400, "bad_request", "Stripe requests must be form-encoded")
    form = _form(body)
    if segments == ("v1", "payment_intents"):
        amount = _amount(form, "amount")
        currency = form.get("currency", "")
        return to_usd_micros(amount, currency)
    if _matches(("v1", "payment_intents", "*"), segments) and "amount" not in form:
        return 0
    if any(_matches(shape, segments) for shape in _FREE_POSTS):
        return 0
    raise PricingRefusal(
        403,
        "unpriced_endpoint",
        f"POST /{'/'.join(segments)} may move money and has no price rule",
    )
