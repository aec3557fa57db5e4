"""Stripe pricing rules, one request at a time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybrake._common import EndpointPattern, normalise_path
from keybrake.vendors._pricing import (
    Counted,
    Lookup,
    PricingRefusal,
    Quote,
    VendorRequest,
    nothing_counted,
    usd_to_micros,
)
from keybrake.vendors.stripe._params import DELETE_PARAMS, FREE_WRITES, OBJECT_WRITES
from keybrake.vendors.stripe.pricing import StripePricer, StripePricing

FORM = "application/x-www-form-urlencoded"


def request(method: str, path: str, body: bytes = b"", query: str = "") -> VendorRequest:
    return VendorRequest(method, normalise_path(path), query, FORM, body)


async def no_lookup(path: str) -> Mapping[str, Any] | None:
    raise AssertionError(f"unexpected look-up of {path}")


async def quote(pricer: StripePricer, req: VendorRequest) -> int:
    return (await pricer.quote(req, no_lookup)).micros


@pytest.mark.parametrize(
    ("path", "body", "micros"),
    [
        ("/v1/payment_intents", b"amount=2000&currency=usd", 20_000_000),
        ("/v1/payment_intents", b"amount=1&currency=usd", 10_000),
        ("/v1/charges", b"amount=500&currency=gbp", 7_000_000),
        ("/v1/payouts", b"amount=1000&currency=usd", 10_000_000),
        ("/v1/transfers", b"amount=1000&currency=eur&destination=acct_1", 12_000_000),
        ("/v1/payment_intents", b"amount=1000&currency=jpy", 8_000_000),  # zero-decimal
        ("/v1/payment_intents", b"amount=1000&currency=KRW", 800_000),
        ("/v1/payment_intents", b"amount=1000&currency=bhd", 2_700_000),  # three-decimal
        ("/v1/payment_intents", b"amount=3&currency=kwd", 10_200),
        ("/v1/invoiceitems", b"amount=999&currency=usd&customer=cus_1", 9_990_000),
        ("/v1/invoiceitems", b"unit_amount=250&quantity=4&currency=usd", 10_000_000),
        ("/v1/invoiceitems", b"unit_amount=250&currency=usd", 2_500_000),
    ],
)
async def test_priced_requests(path: str, body: bytes, micros: int) -> None:
    assert await quote(StripePricer(), request("POST", path, body)) == micros


async def test_conversion_rounds_up() -> None:
    # 1 VND at $0.000045 is 45 micro-dollars; 1 cent of SEK at $0.11 is 1,100.
    pricer = StripePricer()
    assert pricer.to_usd_micros(1, "vnd") == 45
    assert pricer.to_usd_micros(1, "sek") == 1_100
    assert pricer.to_usd_micros(1, "inr") == 130


@given(
    amount=st.integers(min_value=0, max_value=99_999_999_999),
    rate=st.decimals(min_value="0.000001", max_value="10000", places=6),
    exponent=st.sampled_from([0, 2, 3]),
)
def test_integer_conversion_is_the_decimal_one_exactly(
    amount: int, rate: Decimal, exponent: int
) -> None:
    pricer = StripePricer(StripePricing(currencies={"xts": (exponent, rate)}))
    expected = usd_to_micros(Decimal(amount) * rate / (Decimal(10) ** exponent))
    assert pricer.to_usd_micros(amount, "xts") == expected


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/payment_intents/pi_1", b""),
        ("DELETE", "/v1/customers/cus_1", b""),
        ("POST", "/v1/customers", b"email=a%40b.c"),
        ("POST", "/v1/payment_methods/pm_1/attach", b"customer=cus_1"),
        ("POST", "/v1/payment_intents/pi_1", b"metadata[order]=7"),
        ("POST", "/v1/charges/ch_1", b"description=x"),
        ("POST", "/v1/products", b"name=x"),
    ],
)
async def test_free_requests(method: str, path: str, body: bytes) -> None:
    assert await quote(StripePricer(), request(method, path, body)) == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/subscriptions", b"customer=cus_1", 403, "unpriced_endpoint"),
        ("POST", "/v1/checkout/sessions", b"mode=payment", 403, "unpriced_endpoint"),
        ("PUT", "/v1/customers/cus_1", b"", 403, "unpriced_endpoint"),
        ("POST", "/v1/invoiceitems", b"price=price_1&currency=usd", 403, "unpriced_endpoint"),
        ("POST", "/v1/payment_intents", b"amount=10&currency=zzz", 400, "unsupported_currency"),
        ("POST", "/v1/payment_intents", b"amount=10", 400, "unsupported_currency"),
        ("POST", "/v1/payment_intents", b"amount=0&currency=usd", 400, "bad_request"),
        ("POST", "/v1/payment_intents", b"amount=1e3&currency=usd", 400, "bad_request"),
        ("POST", "/v1/payment_intents", b"amount=999999999999&currency=usd", 400, "bad_request"),
        ("POST", "/v1/refunds", b"amount=10", 400, "bad_request"),
    ],
)
async def test_refused_requests(
    method: str, path: str, body: bytes, status: int, code: str
) -> None:
    with pytest.raises(PricingRefusal) as refused:
        await quote(StripePricer(), request(method, path, body))
    assert (refused.value.status, refused.value.code) == (status, code)


async def test_post_parameters_in_the_query_are_refused() -> None:
    with pytest.raises(PricingRefusal, match="body"):
        await quote(StripePricer(), request("POST", "/v1/payment_intents", b"", "amount=1"))


async def test_operator_settings() -> None:
    settings = StripePricing.from_mapping(
        {
            "currencies": {"eur": {"usd_rate": "1.10"}, "xau": {"usd_rate": "2000", "exponent": 3}},
            "free_endpoints": ["POST /v1/subscriptions"],
        }
    )
    pricer = StripePricer(settings)
    assert await quote(pricer, request("POST", "/v1/subscriptions", b"customer=c")) == 0
    assert await quote(pricer, request("POST", "/v1/charges", b"amount=100&currency=eur")) == (
        1_100_000
    )
    assert pricer.to_usd_micros(1, "xau") == 2_000_000
    assert EndpointPattern.parse("POST /v1/subscriptions") in settings.free_endpoints


@pytest.mark.parametrize(
    "section",
    [
        {"currencies": {"eur": "1.1"}},
        {"currencies": {"eur": {"usd_rate": "-1"}}},
        {"currencies": {"zzz": {"usd_rate": "1"}}},  # a new currency needs its exponent
        {"free_endpoints": "POST /v1/x"},
        {"free_endpoints": ["v1/x"]},
        {"rates": {}},
    ],
)
def test_malformed_settings(section: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        StripePricing.from_mapping(section)


async def test_refund_without_amount_is_bounded_by_the_charge() -> None:
    async def lookup(path: str) -> Mapping[str, Any] | None:
        assert path == "/v1/payment_intents/pi_1"
        return {"currency": "usd", "amount": 5000, "amount_received": 4000}

    quote = await StripePricer().quote(
        request("POST", "/v1/refunds", b"payment_intent=pi_1"), lookup
    )
    assert quote.micros == 40_000_000


async def test_a_refund_naming_a_charge_and_an_intent_is_refused() -> None:
    # Priced in the charge's currency (a zero-decimal one, say), refunded from the intent's.
    async def lookup(path: str) -> Mapping[str, Any] | None:
        if path.startswith("/v1/charges/"):
            return {"currency": "vnd", "amount": 100_000, "amount_captured": 100_000}
        return {"currency": "usd", "amount": 100_000, "amount_received": 100_000}

    body = b"charge=ch_1&payment_intent=pi_1&amount=100000"
    with pytest.raises(PricingRefusal, match="not both"):
        await StripePricer().quote(request("POST", "/v1/refunds", body), lookup)


async def test_refund_of_an_unknown_charge_is_refused() -> None:
    async def lookup(path: str) -> Mapping[str, Any] | None:
        return None

    with pytest.raises(PricingRefusal, match="unknown"):
        await StripePricer().quote(request("POST", "/v1/refunds", b"charge=ch_x"), lookup)


# Not the empty text: parse_form answers an empty body itself, and Python 3.10's parse_qsl
# refuses "" where 3.11's gives [].
@given(st.text(alphabet=st.sampled_from("ab=&;é 1[]_"), min_size=1, max_size=30))
def test_plain_forms_parse_as_parse_qsl_parses_them(text: str) -> None:
    from urllib.parse import parse_qsl

    from keybrake.vendors._pricing import _split_form

    try:
        expected = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        with pytest.raises(ValueError, match="bad query field"):
            _split_form(text)
    else:
        assert _split_form(text) == expected


# --- Writes are free only when they can't move money ------------------------------------

PI = {"id": "pi_1", "object": "payment_intent", "amount": 100_000, "currency": "vnd"}


def objects(**found: Mapping[str, Any]) -> Lookup:
    """A lookup that knows the given objects by id (``pi_1=...``, ``ch_1=...``)."""

    async def lookup(path: str) -> Mapping[str, Any] | None:
        kind, _, object_id = path.rpartition("/")
        assert kind in ("/v1/payment_intents", "/v1/charges"), path
        return found.get(object_id)

    return lookup


def counting(**micros: int) -> Counted:
    """A ``counted`` that answers what this key counted, by object id."""

    async def counted(object_id: str) -> int:
        return micros.get(object_id, 0)

    return counted


async def refusal(
    req: VendorRequest, lookup: Lookup = no_lookup, counted: Counted = nothing_counted
) -> tuple[int, str]:
    with pytest.raises(PricingRefusal) as refused:
        await StripePricer().quote(req, lookup, counted)
    return refused.value.status, refused.value.code


async def test_switching_an_intents_currency_is_priced_in_the_new_currency() -> None:
    # Created at 100,000 VND ($4.50 counted), switched to GBP: the confirm would charge
    # £1,000 (~$1,400). The update is priced at the new amount in the new currency.
    pricer = StripePricer()
    counted = counting(pi_1=pricer.to_usd_micros(100_000, "vnd"))
    update = request("POST", "/v1/payment_intents/pi_1", b"currency=gbp")
    quote = await pricer.quote(update, objects(pi_1=PI), counted)
    assert quote.micros == 1_400_000_000 - 4_500_000


async def test_a_new_amount_is_priced_in_the_intents_own_currency() -> None:
    pricer = StripePricer()
    update = request("POST", "/v1/payment_intents/pi_1", b"amount=200000")
    assert (await pricer.quote(update, objects(pi_1=PI))).micros == 9_000_000
    both = request("POST", "/v1/payment_intents/pi_1", b"amount=500&currency=eur")
    assert (await pricer.quote(both, objects(pi_1=PI), counting(pi_1=1_000_000))).micros == (
        5_000_000
    )
    # Lowering the amount below what was counted costs nothing more.
    lower = request("POST", "/v1/payment_intents/pi_1", b"amount=10")
    assert (await pricer.quote(lower, objects(pi_1=PI), counting(pi_1=4_500_000))).micros == 0


async def test_an_update_of_an_unknown_intent_is_refused() -> None:
    update = request("POST", "/v1/payment_intents/pi_x", b"currency=gbp")
    assert await refusal(update, objects()) == (400, "bad_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/customers", b"email=a%40b.c&balance=100000"),
        ("/v1/customers/cus_1", b"balance=100000"),
        ("/v1/customers/cus_1", b"cash_balance[settings][reconciliation_mode]=automatic"),
        ("/v1/customers", b"cash_balance[settings][reconciliation_mode]=automatic"),
        ("/v1/customers/cus_1", b"invoice_credit_balance[usd]=100"),  # unknown: refused
        ("/v1/customers/cus_1", b"source=tok_visa"),  # retries past-due invoices at once
        ("/v1/customers/cus_1", b"coupon=BIGGER"),
        ("/v1/customers/cus_1", b"tax_exempt=none"),
        ("/v1/payment_intents/pi_1", b"application_fee_amount=100"),
        ("/v1/payment_intents/pi_1", b"transfer_data[amount]=100"),
        ("/v1/payment_intents/pi_1", b"hooks[inputs][tax][calculation]=taxcalc_1"),
        ("/v1/payment_intents/pi_1/confirm", b"amount_to_confirm=100"),
        ("/v1/payment_intents/pi_1/capture", b"application_fee_amount=100"),
        ("/v1/payment_intents/pi_1/capture", b"amount_details[tip][amount]=100"),
        ("/v1/payment_intents/pi_1/increment_authorization", b"amount=1&transfer_data[x]=1"),
        ("/v1/charges/ch_1/capture", b"application_fee_amount=100"),
        ("/v1/charges/ch_1/capture", b"application_fee=100"),
        ("/v1/charges/ch_1/capture", b"transfer_data[destination]=acct_1"),
        ("/v1/charges/ch_1", b"fraud_details[user_report]=fraudulent"),
        ("/v1/setup_intents", b"flow_directions[]=outbound"),
        ("/v1/products/prod_1", b"default_price=price_expensive"),
        ("/v1/prices", b"lookup_key=basic&transfer_lookup_key=true&unit_amount=1"),
        ("/v1/prices/price_1", b"currency_options[eur][unit_amount]=99999"),
        ("/v1/refunds/re_1", b"amount=100"),
    ],
)
async def test_money_moving_parameters_of_free_writes_are_refused(path: str, body: bytes) -> None:
    assert await refusal(request("POST", path, body)) == (403, "unpriced_endpoint")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/customers", b"email=a%40b.c&source=tok_visa&metadata[k]=v&address[line1]=x"),
        ("/v1/customers", b"name=x&tax_exempt=exempt&coupon=WELCOME&expand[]=tax"),
        ("/v1/customers/cus_1", b"default_source=card_1&invoice_settings[footer]=x"),
        ("/v1/customers/cus_1/sources", b"source=tok_visa"),
        ("/v1/payment_methods", b"type=card&card[token]=tok_visa&billing_details[name]=x"),
        ("/v1/payment_intents/pi_1", b"description=x&payment_method=pm_1&shipping[name]=y"),
        ("/v1/payment_intents/pi_1/cancel", b"cancellation_reason=abandoned"),
        ("/v1/charges/ch_1", b"metadata[k]=v&receipt_email=a%40b.c"),
        ("/v1/setup_intents", b"customer=cus_1&payment_method_types[]=card&confirm=true"),
        ("/v1/prices", b"currency=usd&unit_amount=100&product=prod_1&recurring[interval]=month"),
        ("/v1/prices/price_1", b"nickname=x&active=false"),
        ("/v1/refunds/re_1", b"metadata[why]=x"),
    ],
)
async def test_descriptive_parameters_stay_free(path: str, body: bytes) -> None:
    assert await quote(StripePricer(), request("POST", path, body)) == 0


@pytest.mark.parametrize(
    ("path", "query", "body"),
    [
        ("/v1/subscriptions/sub_1", "invoice_now=true", b""),
        ("/v1/subscriptions/sub_1", "prorate=true", b""),
        ("/v1/subscriptions/sub_1", "", b"invoice_now=true"),
        ("/v1/subscriptions/sub_1", "invoice%5Fnow=true", b""),  # the name, percent-encoded
        ("/v1/subscriptions/sub_1", "invoice_now[]=true", b""),
        ("/v1/customers/cus_1/subscriptions/sub_1", "invoice_now=true", b""),
        ("/v1/subscription_items/si_1", "proration_behavior=always_invoice", b""),
        ("/v1/subscription_items/si_1", "", b"proration_date=1700000000"),
        ("/v1/subscription_items/si_1", "payment_behavior=error_if_incomplete", b""),
        ("/v1/customers/cus_1", "anything_new=1", b""),
        ("/v1/subscriptions/sub_1/discount", "", b""),
        ("/v1/customers/cus_1/discount", "", b""),
    ],
)
async def test_deletes_that_bill_are_refused(path: str, query: str, body: bytes) -> None:
    assert await refusal(request("DELETE", path, body, query)) == (403, "unpriced_endpoint")


@pytest.mark.parametrize(
    ("path", "query", "body"),
    [
        ("/v1/subscriptions/sub_1", "", b""),
        ("/v1/subscriptions/sub_1", "expand[]=latest_invoice", b"cancellation_details[x]=y"),
        ("/v1/subscription_items/si_1", "clear_usage=true", b""),
        ("/v1/customers/cus_1", "", b""),
    ],
)
async def test_plain_deletes_stay_free(path: str, query: str, body: bytes) -> None:
    assert await quote(StripePricer(), request("DELETE", path, body, query)) == 0


async def test_a_malformed_delete_query_is_refused() -> None:
    req = request("DELETE", "/v1/subscriptions/sub_1", query="invoice_now")
    assert await refusal(req) == (400, "bad_request")


USD_PI = {"id": "pi_1", "amount": 5_000, "currency": "usd", "amount_capturable": 0}


@pytest.mark.parametrize("action", ["confirm", "capture", "apply_customer_balance"])
async def test_completing_an_intent_costs_its_amount_less_what_this_key_counted(
    action: str,
) -> None:
    pricer = StripePricer()
    req = request("POST", f"/v1/payment_intents/pi_1/{action}", b"")
    intent = dict(USD_PI, amount_capturable=5_000 if action == "capture" else 0)
    # Created elsewhere, or created here and declined (402: released, nothing counted).
    assert (await pricer.quote(req, objects(pi_1=intent))).micros == 50_000_000
    # Created by this key: its settlement recorded the intent's id.
    assert (await pricer.quote(req, objects(pi_1=intent), counting(pi_1=50_000_000))).micros == 0
    # Counted in part: the rest.
    partly = counting(pi_1=20_000_000)
    assert (await pricer.quote(req, objects(pi_1=intent), partly)).micros == 30_000_000


async def test_counted_is_asked_by_the_intents_own_id() -> None:
    asked: list[str] = []

    async def counted(object_id: str) -> int:
        asked.append(object_id)
        return 0

    # Not by the path's spelling of it: what Stripe answers for that path is the object.
    req = request("POST", "/v1/payment_intents/pi_1_alias/confirm", b"off_session=true")
    await StripePricer().quote(req, objects(pi_1_alias=USD_PI), counted)
    assert asked == ["pi_1"]


@pytest.mark.parametrize(
    "found", [None, {"id": "pi_1"}, {"id": "pi_1", "amount": "5000", "currency": "usd"}]
)
@pytest.mark.parametrize("action", ["confirm", "capture", "increment_authorization"])
async def test_completing_an_unknown_intent_is_refused(
    action: str, found: Mapping[str, Any] | None
) -> None:
    req = request("POST", f"/v1/payment_intents/pi_1/{action}", b"amount=6000")
    if action != "increment_authorization":
        req = request("POST", f"/v1/payment_intents/pi_1/{action}", b"")
    lookup = objects(pi_1=found) if found is not None else objects()
    with pytest.raises(PricingRefusal, match="unknown payment intent") as refused:
        await StripePricer().quote(req, lookup, counting())
    assert refused.value.code == "bad_request"


async def test_capture_is_priced_at_what_it_captures() -> None:
    pricer = StripePricer()
    authorized = dict(USD_PI, amount_capturable=5_000)
    partial = request("POST", "/v1/payment_intents/pi_1/capture", b"amount_to_capture=1000")
    assert (await pricer.quote(partial, objects(pi_1=authorized))).micros == 10_000_000
    # Over-capture asks for more than the amount: priced at what it asks, less what was counted.
    over = request("POST", "/v1/payment_intents/pi_1/capture", b"amount_to_capture=6000")
    quote = await pricer.quote(over, objects(pi_1=authorized), counting(pi_1=50_000_000))
    assert quote.micros == 10_000_000
    # A second partial capture: the total captured once it is done, less what was counted.
    captured = dict(USD_PI, amount_received=3_000, amount_capturable=2_000)
    rest = request("POST", "/v1/payment_intents/pi_1/capture", b"")
    quote = await pricer.quote(rest, objects(pi_1=captured), counting(pi_1=30_000_000))
    assert quote.micros == 20_000_000


async def test_increment_authorization_is_priced_at_the_new_total() -> None:
    req = request("POST", "/v1/payment_intents/pi_1/increment_authorization", b"amount=8000")
    quote = await StripePricer().quote(req, objects(pi_1=USD_PI), counting(pi_1=50_000_000))
    assert quote.micros == 30_000_000
    missing = request("POST", "/v1/payment_intents/pi_1/increment_authorization", b"")
    assert await refusal(missing, objects(pi_1=USD_PI)) == (400, "bad_request")


async def test_applying_a_customer_balance_is_bounded_by_the_larger_amount() -> None:
    req = request(
        "POST", "/v1/payment_intents/pi_1/apply_customer_balance", b"amount=9000&currency=usd"
    )
    assert (await StripePricer().quote(req, objects(pi_1=USD_PI))).micros == 90_000_000


async def test_capturing_a_charge_costs_what_is_uncaptured_less_what_was_counted() -> None:
    pricer = StripePricer()
    charge = {"id": "ch_1", "amount": 5_000, "amount_refunded": 1_000, "currency": "eur"}
    whole = request("POST", "/v1/charges/ch_1/capture", b"")
    assert (await pricer.quote(whole, objects(ch_1=charge))).micros == 48_000_000
    assert (await pricer.quote(whole, objects(ch_1=charge), counting(ch_1=60_000_000))).micros == 0
    part = request("POST", "/v1/charges/ch_1/capture", b"amount=2000")
    assert (await pricer.quote(part, objects(ch_1=charge))).micros == 24_000_000
    assert await refusal(whole, objects()) == (400, "bad_request")


async def test_creating_and_confirming_at_once_is_priced_as_a_create() -> None:
    req = request("POST", "/v1/payment_intents", b"amount=2000&currency=usd&confirm=true")
    assert await quote(StripePricer(), req) == 20_000_000


@pytest.mark.parametrize(
    "body", [b"amount[x]=1&amount=10&currency=usd", b"amount=10&currency[]=usd"]
)
async def test_a_nested_amount_or_currency_is_refused(body: bytes) -> None:
    assert await refusal(request("POST", "/v1/payment_intents", body)) == (400, "bad_request")


def answer(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/payment_intents/pi_1/confirm",
        "/v1/payment_intents/pi_1/capture",
        "/v1/payment_intents/pi_1",
        "/v1/charges/ch_1/capture",
    ],
)
def test_a_write_to_an_object_settles_at_its_quote_against_the_object(path: str) -> None:
    # The answer shows the whole amount; the quote was that less what was counted before.
    # Settling at the whole amount would count the part counted at creation twice.
    pricer = StripePricer()
    req = request("POST", path, b"")
    body = answer(id="pi_1", amount=5_000, currency="usd")
    outcome = pricer.outcome(req, Quote(30_000_000), body)
    assert (outcome.micros, outcome.object_id) == (30_000_000, "pi_1")
    assert pricer.outcome(req, Quote(30_000_000), b"").object_id == path.split("/")[3]


def test_a_create_settles_at_stripes_amount_against_the_new_object() -> None:
    req = request("POST", "/v1/payment_intents", b"amount=9000&currency=usd")
    outcome = StripePricer().outcome(
        req, Quote(90_000_000), answer(id="pi_2", amount=4000, currency="usd")
    )
    assert (outcome.micros, outcome.object_id) == (40_000_000, "pi_2")


_NAMES = st.from_regex(r"[a-z_]{1,24}", fullmatch=True)
_SUFFIXES = st.sampled_from(["", "[]", "[x]", "[0][y]"])


def _concrete(shape: tuple[str, ...]) -> str:
    return "/" + "/".join("x_1" if part == "*" else part for part in shape)


@given(
    rule=st.sampled_from(
        [(shape, allowed) for shape, allowed in FREE_WRITES.items()]
        + [(shape, inert | priced) for shape, (inert, priced) in OBJECT_WRITES.items()]
    ),
    name=_NAMES,
    suffix=_SUFFIXES,
)
def test_any_parameter_off_a_writes_list_is_refused(
    rule: tuple[tuple[str, ...], frozenset[str]], name: str, suffix: str
) -> None:
    shape, allowed = rule
    if name in allowed:
        return
    req = request("POST", _concrete(shape), f"metadata[k]=v&{name}{suffix}=1".encode())
    assert asyncio.run(refusal(req)) == (403, "unpriced_endpoint")


@given(
    shape=st.sampled_from([*DELETE_PARAMS, ("v1", "customers", "*")]),
    name=_NAMES,
    suffix=_SUFFIXES,
    where=st.sampled_from(["query", "body"]),
)
def test_any_parameter_off_a_deletes_list_is_refused(
    shape: tuple[str, ...], name: str, suffix: str, where: str
) -> None:
    if name in DELETE_PARAMS.get(shape, frozenset({"expand"})):
        return
    param = f"{name}{suffix}=1"
    query, body = (param, b"") if where == "query" else ("", param.encode())
    req = request("DELETE", _concrete(shape), body, query)
    assert asyncio.run(refusal(req)) == (403, "unpriced_endpoint")


@pytest.mark.parametrize(
    "extra",
    [
        b"&price=price_1",
        b"&price_data[unit_amount]=999999",
        b"&tax_rates[]=txr_1",
        b"&unit_amount_decimal=99999.5",
        b"&tax_behavior=exclusive",
        b"&quantity_decimal=1000",  # in the 2026-03-25 API: 1000 of them
        b"&quantity=1000",
        b"&pricing[price]=price_1",
        b"&a_parameter_stripe_adds_later=1",
    ],
)
async def test_an_invoice_item_that_may_bill_more_than_its_amount_is_refused(extra: bytes) -> None:
    with pytest.raises(PricingRefusal) as refused:
        await quote(
            StripePricer(),
            request("POST", "/v1/invoiceitems", b"amount=100&currency=usd&customer=cus_1" + extra),
        )
    assert refused.value.code == "unpriced_endpoint"
    if extra != b"&quantity=1000":  # which is what multiplies a unit amount
        with pytest.raises(PricingRefusal) as by_unit:
            await quote(
                StripePricer(),
                request("POST", "/v1/invoiceitems", b"unit_amount=100&currency=usd" + extra),
            )
        assert by_unit.value.code == "unpriced_endpoint"


async def test_an_invoice_item_may_say_what_moves_no_money() -> None:
    body = (
        b"customer=cus_1&currency=usd&unit_amount=250&quantity=4&description=seats"
        b"&discountable=false&invoice=in_1&subscription=sub_1&metadata[run]=7"
        b"&period[start]=1&period[end]=2&expand[]=invoice"
    )
    assert await quote(StripePricer(), request("POST", "/v1/invoiceitems", body)) == 10_000_000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # Another path to the same tax id, and a credit taken off the next invoice.
        ("DELETE", "/v1/tax_ids/txi_1", b""),
        ("DELETE", "/v1/invoiceitems/ii_credit", b""),
        ("DELETE", "/v1/some_resource_stripe_adds_later/x_1", b""),
        # What decides the tax running subscriptions bill.
        ("POST", "/v1/customers/cus_1", b"shipping[address][country]=HU&shipping[name]=x"),
        ("POST", "/v1/customers/cus_1", b"address[country]=HU"),
        ("POST", "/v1/products/prod_1", b"tax_code=txcd_10000000"),
        ("POST", "/v1/prices/price_1", b"tax_behavior=exclusive"),
    ],
)
async def test_writes_that_raise_later_bills_are_refused(
    method: str, path: str, body: bytes
) -> None:
    assert await refusal(request(method, path, body)) == (403, "unpriced_endpoint")


async def test_a_new_customer_may_have_an_address() -> None:
    req = request("POST", "/v1/customers", b"email=a%40b.c&address[country]=HU")
    assert await quote(StripePricer(), req) == 0
