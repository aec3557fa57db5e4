"""What a Stripe request can cost, decided before it is forwarded: priced by effect.

Every request is one of three things:

- **free**: reads (``GET``, ``HEAD``); a ``DELETE`` whose parameters (query or body) are all on
  its list (``expand``, and ``cancellation_details`` or ``clear_usage`` where they apply);
  a ``POST`` to a path of :data:`~._params.FREE_WRITES` (customers, payment methods, setup
  intents, products, prices, cancelling an intent, a charge's or refund's details) whose
  parameters are all on that path's list; plus whatever the operator marks free;
- **priced**:

  - creating payment intents (``confirm=true`` included), charges, payouts, transfers,
    refunds and invoice items: the amount, converted to USD at the configured (upper-bound)
    rate and rounded up; a refund without an amount is bounded by what is left to refund on
    its charge or payment intent, looked up first;
  - a write to an existing payment intent or charge (:data:`~._params.OBJECT_WRITES`): what
    the object will have moved in total once the write is done, less what this key already
    counted for that object (``counted(id)``), never below 0. The object is looked up first;
    an unknown one, or one without an amount and currency, is refused 400 ``bad_request``.
    An update that sets ``amount`` or ``currency`` is priced at the new amount in the new
    currency (the other one is the intent's); an update of details only is free. Confirming
    or applying a customer's cash balance: the intent's amount. Capturing an intent: what it
    already received plus ``amount_to_capture`` (else what is capturable, at least what is
    left of the amount). Incrementing an authorization: the new ``amount``. Capturing a
    charge: ``amount``, else its amount less what was released before capture;
- **unpriced**: anything else, refused with 403 ``unpriced_endpoint``: any other ``POST``,
  any parameter missing from a free or object write's list (so a parameter Stripe adds
  tomorrow is refused, not waved through), and DELETEs that bill (``invoice_now``,
  ``prorate``, ``proration_behavior``... or removing a discount or tax id). A form name is
  compared by its top-level parameter, before the first ``[``. The lists, and why each
  money-moving parameter is left out of them, are in :mod:`._params`.

After a 2xx, what the request cost is settled against the Stripe object it answered with
(its ``id``), so that ``counted`` can find it later. A create settles at the amount and
currency in Stripe's answer. A write to an existing object settles at its quote, never more:
the answer shows the object's whole amount, of which what this key counted before was
already subtracted from the quote, so settling at the answer would count that part twice.
Together these keep, for each object, what this key counted at least what the object can
move through this key: a create counts the amount; raising it (update, increment,
over-capture) counts the difference; a confirm or capture of an intent this key did not
count (created elsewhere, or declined at creation with 402 and released) counts it all.

Left to the object's own bound: a write racing a change made outside this key (the lookup
saw the old amount; the change itself was not this key's to count), and concurrent writes to
one object before either is settled (each is priced against what was counted without the
other, so the pair counts too much, never too little). A charge captured through
``/v1/charges`` is counted by the charge's id only: an intent's count does not cover it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qsl
from urllib.parse import quote as urlquote

import attrs

from keybrake._common import EndpointPattern
from keybrake.vendors._pricing import (
    FREE,
    Counted,
    Lookup,
    Outcome,
    PriceReport,
    PricingRefusal,
    Quote,
    VendorRequest,
    decimal_setting,
    endpoint_patterns,
    nothing_counted,
    parse_form,
    single_values,
)
from keybrake.vendors.stripe._params import (
    CHARGE_CAPTURE,
    DELETE_PARAMS,
    FREE_WRITES,
    INTENT_CAPTURE,
    INTENT_CONFIRM,
    INTENT_CUSTOMER_BALANCE,
    INTENT_INCREMENT,
    INTENT_UPDATE,
    OBJECT_WRITES,
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

_T = TypeVar("_T")


def _shape(text: str) -> tuple[str, ...]:
    return tuple(text.strip("/").split("/"))


# Requests that create a money-moving object whose amount and currency are in the form.
_AMOUNT_CREATES = frozenset(
    _shape(p) for p in ("/v1/payment_intents", "/v1/charges", "/v1/payouts", "/v1/transfers")
)
_REFUNDS = _shape("/v1/refunds")
_INVOICE_ITEMS = _shape("/v1/invoiceitems")

# Parameters the price reads as one plain value: ``amount[x]`` is never one Stripe takes, and
# a nested form of one of these names is refused rather than read one way by us and another
# by Stripe.
_SCALARS = frozenset(
    {"amount", "amount_to_capture", "charge", "currency", "payment_intent", "quantity"}
    | {"unit_amount"}
)


def _matches(shape: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    if len(shape) != len(segments):
        return False
    return all(p == "*" or p == s for p, s in zip(shape, segments, strict=True))


def _find(
    rules: Mapping[tuple[str, ...], _T], segments: tuple[str, ...]
) -> tuple[tuple[str, ...], _T] | None:
    for shape, rule in rules.items():
        if _matches(shape, segments):
            return shape, rule
    return None


def _top(name: str) -> str:
    """A form name's top-level parameter: ``metadata[k]`` is ``metadata``."""
    return name.partition("[")[0]


def _refuse_unlisted(names: Iterable[str], allowed: frozenset[str], request: VendorRequest) -> None:
    """Refuse any parameter not on the operation's list: it may move money.

    Raises:
        PricingRefusal: 403 ``unpriced_endpoint`` naming the first such parameter.
    """
    for name in names:
        if _top(name) not in allowed:
            raise PricingRefusal(
                403,
                "unpriced_endpoint",
                f"parameter {_top(name)!r} of {request.method} {request.path} may move money"
                " and has no price rule",
            )


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

    async def quote(
        self, request: VendorRequest, lookup: Lookup, counted: Counted = nothing_counted
    ) -> Quote:
        """The most the request can cost, less what this key already counted for its object.

        Args:
            request: the request as the proxy parsed it.
            lookup: GETs a Stripe object with the real credential.
            counted: what this vault key already counted for a Stripe object id.

        Raises:
            PricingRefusal: a malformed request (400), an unknown currency or object (400),
                or a request that may move money and that nothing bounds (403
                ``unpriced_endpoint``).
        """
        method, segments = request.method, request.segments
        if method in ("GET", "HEAD"):
            return FREE
        if method == "DELETE":
            return self._delete(request)
        if method != "POST":
            raise PricingRefusal(403, "unpriced_endpoint", f"{method} is not priced for Stripe")
        if request.query:
            raise PricingRefusal(400, "bad_request", "Stripe POST parameters belong in the body")
        form = single_values(parse_form(request), frozenset())
        for name in form:
            if _top(name) in _SCALARS and name != _top(name):
                raise PricingRefusal(400, "bad_request", f"'{_top(name)}' must be one value")
        if any(p.matches(method, segments) for p in self.settings.free_endpoints):
            return FREE
        if segments in _AMOUNT_CREATES:
            return Quote(self.to_usd_micros(_amount(form, "amount"), _currency(form)))
        if segments == _REFUNDS:
            return Quote(await self._refund_bound(form, lookup))
        if segments == _INVOICE_ITEMS:
            return Quote(self._invoice_item_bound(form))
        found = _find(OBJECT_WRITES, segments)
        if found is not None:
            shape, (inert, priced) = found
            _refuse_unlisted(form, inert | priced, request)
            if shape == INTENT_UPDATE and not priced & form.keys():
                return FREE  # details only: the amount stands, counted when it was set
            return await self._object_write(shape, segments[2], form, lookup, counted)
        free = _find(FREE_WRITES, segments)
        if free is not None:
            _refuse_unlisted(form, free[1], request)
            return FREE
        raise PricingRefusal(
            403,
            "unpriced_endpoint",
            f"POST {request.path} may move money and has no price rule",
        )

    def _delete(self, request: VendorRequest) -> Quote:
        """A DELETE is free only on a path whose removal moves no money, with the parameters
        listed for it (query or body).

        Raises:
            PricingRefusal: 403 ``unpriced_endpoint`` for any other DELETE, 400
                ``bad_request`` for a malformed query or body.
        """
        segments = request.segments
        found = _find(DELETE_PARAMS, segments)
        if found is None:
            raise PricingRefusal(
                403, "unpriced_endpoint", f"DELETE {request.path} may raise what is billed later"
            )
        names = [name for name, _ in parse_form(request)]
        if request.query:
            try:
                query = parse_qsl(request.query, keep_blank_values=True, strict_parsing=True)
            except ValueError:
                raise PricingRefusal(400, "bad_request", "malformed query string") from None
            names += [name for name, _ in query]
        _refuse_unlisted(names, found[1], request)
        return FREE

    async def _object_write(
        self,
        shape: tuple[str, ...],
        object_id: str,
        form: dict[str, str],
        lookup: Lookup,
        counted: Counted,
    ) -> Quote:
        """Price a write to an existing payment intent or charge by what it moves in total
        once done, less what this key already counted for that object.

        Raises:
            PricingRefusal: 400 ``bad_request`` for an unknown object or a malformed amount.
        """
        if shape == CHARGE_CAPTURE:
            charge = await self._object(lookup, "charges", object_id, "a capture")
            amount, currency = charge["amount"], charge["currency"]
            if "amount" in form:
                total = _amount(form, "amount")
            else:  # Stripe captures what was not released ("refunded") before capture
                total = max(0, amount - _int(charge, "amount_refunded"))
            micros = self.to_usd_micros(total, currency)
        else:
            what = {
                INTENT_UPDATE: "an update",
                INTENT_CONFIRM: "a confirmation",
                INTENT_CAPTURE: "a capture",
                INTENT_INCREMENT: "an increment",
                INTENT_CUSTOMER_BALANCE: "a customer balance applied to one",
            }[shape]
            intent = await self._object(lookup, "payment_intents", object_id, what)
            amount, currency = intent["amount"], intent["currency"]
            if shape == INTENT_UPDATE:
                # Bound by the new amount in the new currency, whichever of the two is new.
                if "amount" in form:
                    amount = _amount(form, "amount")
                if "currency" in form:
                    currency = _currency(form)
                micros = self.to_usd_micros(amount, currency)
            elif shape == INTENT_CAPTURE:
                received = _int(intent, "amount_received")
                if "amount_to_capture" in form:
                    now = _amount(form, "amount_to_capture")
                else:
                    now = max(_int(intent, "amount_capturable"), amount - received)
                micros = self.to_usd_micros(received + now, currency)
            elif shape == INTENT_INCREMENT:
                micros = self.to_usd_micros(_amount(form, "amount"), currency)
            else:  # confirm, or the customer's cash balance applied: at most the amount
                micros = self.to_usd_micros(amount, currency)
                if shape == INTENT_CUSTOMER_BALANCE and "amount" in form:
                    given = _currency(form) if "currency" in form else currency
                    micros = max(micros, self.to_usd_micros(_amount(form, "amount"), given))
            object_id = intent["id"] if isinstance(intent.get("id"), str) else object_id
        return Quote(max(0, micros - await counted(object_id)))

    async def _object(
        self, lookup: Lookup, kind: str, object_id: str, what: str
    ) -> Mapping[str, Any]:
        """A payment intent or charge, with an amount and a currency.

        Raises:
            PricingRefusal: 400 ``bad_request`` if Stripe doesn't know it, or not its amount.
        """
        found = await lookup(f"/v1/{kind}/{urlquote(object_id, safe='')}")
        amount = None if found is None else found.get("amount")
        if (
            found is None
            or not isinstance(amount, int)
            or isinstance(amount, bool)
            or amount < 0
            or not isinstance(found.get("currency"), str)
        ):
            noun = "payment intent" if kind == "payment_intents" else "charge"
            raise PricingRefusal(400, "bad_request", f"can't price {what} of an unknown {noun}")
        return found

    async def _refund_bound(self, form: dict[str, str], lookup: Lookup) -> int:
        if "charge" in form and "payment_intent" in form:
            # Priced in one's currency, refunded from whichever Stripe reads.
            raise PricingRefusal(
                400, "bad_request", "a refund names 'charge' or 'payment_intent', not both"
            )
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
        # Anything the price doesn't read could bill more than it: refused, not guessed.
        beyond = sorted({_top(name) for name in form} - _INVOICE_ITEM_PARAMETERS)
        if beyond:
            raise PricingRefusal(
                403,
                "unpriced_endpoint",
                f"an invoice item with {beyond} may bill more than its amount",
            )
        currency = _currency(form)
        if "amount" in form:
            if "quantity" in form:  # the total, or one of each? Refused rather than guessed.
                raise PricingRefusal(
                    403,
                    "unpriced_endpoint",
                    "an invoice item with 'amount' and 'quantity' may bill more than its amount",
                )
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
        """What a 2xx cost, recorded against the Stripe object it answered with.

        A create settles at the amount and currency Stripe answered with. A write to an
        existing payment intent or charge settles at its quote, never more: the quote is
        already what it adds to the object beyond what this key counted before, while the
        answer shows the object's whole amount.
        """
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        object_id = data.get("id") if isinstance(data.get("id"), str) else None
        if _find(OBJECT_WRITES, request.segments) is not None:
            return Outcome(quote.micros, object_id=object_id or request.segments[2])
        amount, currency = data.get("amount"), data.get("currency")
        if isinstance(amount, int) and isinstance(currency, str) and amount >= 0:
            try:
                return Outcome(self.to_usd_micros(amount, currency), object_id=object_id)
            except PricingRefusal:
                pass
        return Outcome(quote.micros, object_id=object_id)

    def reports(self, request: VendorRequest, body: bytes) -> list[PriceReport]:
        return []


#: Invoice item parameters that can make it bill more than ``amount`` or ``unit_amount``.
#: What an invoice item may say: what its price reads, and what moves no money of its own.
#: Anything else is refused: a price object, a decimal unit amount or quantity, a tax on
#: top, and whatever Stripe adds later (``quantity_decimal`` came in 2026) may bill more than
#: the amount read here.
_INVOICE_ITEM_PARAMETERS = frozenset(
    {
        "amount",
        "currency",
        "customer",
        "description",
        "discountable",
        "expand",
        "invoice",
        "metadata",
        "period",
        "quantity",
        "subscription",
        "unit_amount",
    }
)


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


def _int(data: Mapping[str, Any], name: str) -> int:
    """A non-negative integer field of a Stripe object, 0 if absent or not one."""
    value = data.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0
