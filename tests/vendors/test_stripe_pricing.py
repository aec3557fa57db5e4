"""Stripe pricing rules, one request at a time."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybrake._common import EndpointPattern, normalise_path
from keybrake.vendors._pricing import PricingRefusal, VendorRequest, usd_to_micros
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
        ("POST", "/v1/payment_intents/pi_1/confirm", b""),
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
