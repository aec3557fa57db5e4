"""Twilio pricing rules: segments, destinations, calls, late prices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from keybrake._common import normalise_path
from keybrake.vendors._pricing import PriceReport, PricingRefusal, Quote, VendorRequest
from keybrake.vendors.twilio.pricing import TwilioPricer, TwilioPricing, sms_segments

ACCOUNT = "AC" + "1" * 32
MESSAGES = f"/2010-04-01/Accounts/{'AC' + 'f' * 32}/Messages.json"
CALLS = MESSAGES.replace("Messages", "Calls")


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("{" * 80, 1),  # extended GSM-7 characters count twice
        ("{" * 81, 2),
        ("é" * 160, 1),  # in the GSM-7 basic set
        ("ж" * 70, 1),  # UCS-2
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("👍" * 35, 1),  # an emoji is two UTF-16 units
        ("👍" * 36, 2),
    ],
)
def test_sms_segments(body: str, segments: int) -> None:
    assert sms_segments(body) == segments


def request(path: str, form: list[tuple[str, str]], method: str = "POST") -> VendorRequest:
    return VendorRequest(
        method,
        normalise_path(path),
        "",
        "application/x-www-form-urlencoded",
        urlencode(form).encode(),
    )


async def no_lookup(path: str) -> Mapping[str, Any] | None:
    raise AssertionError(path)


async def quote(form: list[tuple[str, str]], path: str = MESSAGES, **settings: Any) -> Quote:
    pricer = TwilioPricer(TwilioPricing.from_mapping(settings), account_sid=ACCOUNT)
    return await pricer.quote(request(path, form), no_lookup)


@pytest.mark.parametrize(
    ("form", "micros"),
    [
        ([("To", "+15005550006"), ("Body", "hi")], 8_300),
        ([("To", "+15005550006"), ("Body", "ж" * 71)], 16_600),
        ([("To", "+447700900000"), ("Body", "hi")], 52_400),
        ([("To", "+819012345678"), ("Body", "hi")], 200_000),  # the default entry
        (
            [("To", "+15005550006"), ("MediaUrl", "https://x/1.png"), ("MediaUrl", "https://x/2")],
            22_000,
        ),
        ([("To", "+15005550006"), ("ContentSid", "HX" + "0" * 32)], 24 * 8_300),
    ],
)
async def test_messages(form: list[tuple[str, str]], micros: int) -> None:
    assert (await quote(form)).micros == micros


async def test_longest_prefix_wins_and_no_default_refuses() -> None:
    prices: Any = {"sms_usd_per_segment": {"1": "0.01", "1876": "0.09"}}
    assert (await quote([("To", "+18761234567")], **prices)).micros == 90_000
    assert (await quote([("To", "+12125550000")], **prices)).micros == 10_000
    with pytest.raises(PricingRefusal) as refused:
        await quote([("To", "+447700900000")], **prices)
    assert (refused.value.status, refused.value.code) == (403, "unpriced_endpoint")


async def test_calls_are_cut_to_the_maximum() -> None:
    result = await quote([("To", "+15005550006"), ("TimeLimit", "99999")], CALLS)
    assert result.micros == 10 * 14_000
    assert result.body is not None
    assert dict(parse_qsl(result.body.decode()))["TimeLimit"] == "600"
    shorter = await quote([("To", "+15005550006"), ("TimeLimit", "61")], CALLS)
    assert shorter.micros == 2 * 14_000
    assert shorter.body is not None
    assert dict(parse_qsl(shorter.body.decode()))["TimeLimit"] == "61"
    unset = await quote([("To", "+15005550006")], CALLS, max_call_minutes=3)
    assert unset.micros == 3 * 14_000


async def test_the_account_in_the_path_is_replaced() -> None:
    result = await quote([("To", "+15005550006")])
    assert result.segments == ("2010-04-01", "Accounts", ACCOUNT, "Messages.json")
    pricer = TwilioPricer(account_sid=ACCOUNT)
    fetch = await pricer.quote(
        request(f"/2010-04-01/Accounts/{'AC' + 'f' * 32}.json", [], "GET"), no_lookup
    )
    assert fetch.segments == ("2010-04-01", "Accounts", f"{ACCOUNT}.json")


@pytest.mark.parametrize(
    ("path", "form"),
    [
        (MESSAGES.replace("Messages.json", "IncomingPhoneNumbers.json"), [("PhoneNumber", "+1")]),
        (MESSAGES.replace("Messages.json", "Queues.json"), [("FriendlyName", "q")]),
    ],
)
async def test_other_posts_are_unpriced(path: str, form: list[tuple[str, str]]) -> None:
    with pytest.raises(PricingRefusal) as refused:
        await quote(form, path)
    assert refused.value.code == "unpriced_endpoint"


async def test_marked_free_by_the_operator() -> None:
    path = MESSAGES.replace("Messages.json", "Queues.json")
    result = await quote(
        [("FriendlyName", "q")], path, free_endpoints=["POST /2010-04-01/Accounts/*/Queues.json"]
    )
    assert result.micros == 0


def test_late_prices_are_reported() -> None:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    fetch = request(MESSAGES.replace(".json", "/SM1.json"), [], "GET")
    assert pricer.reports(fetch, b'{"sid": "SM1", "price": "-0.00790", "price_unit": "USD"}') == [
        PriceReport("SM1", 7_900)
    ]
    page = b'{"messages": [{"sid": "SM1", "price": null}, {"sid": "SM2", "price": "-0.02"}]}'
    assert pricer.reports(fetch, page) == [PriceReport("SM2", 20_000)]
    assert pricer.reports(fetch, b'{"sid": "SM3", "price": "-1", "price_unit": "EUR"}') == []
    assert pricer.reports(fetch, b"not json") == []


def test_outcome_keeps_the_estimate_until_twilio_knows() -> None:
    pricer = TwilioPricer(account_sid=ACCOUNT)
    create = request(MESSAGES, [("To", "+1")])
    unknown = pricer.outcome(create, Quote(8_300), b'{"sid": "SM1", "price": null}')
    assert (unknown.micros, unknown.final, unknown.object_id) == (8_300, False, "SM1")
    known = pricer.outcome(create, Quote(8_300), b'{"sid": "SM1", "price": "-0.0075"}')
    assert (known.micros, known.final) == (7_500, True)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_call_minutes": 0},
        {"max_call_minutes": "5"},
        {"sms_usd_per_segment": {"1": "cheap"}},
        {"sms_usd_per_segment": ["1"]},
        {"voice": {}},
    ],
)
def test_malformed_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        TwilioPricing.from_mapping(settings)


async def test_a_call_update_cannot_lift_the_time_limit() -> None:
    update = MESSAGES.replace("Messages.json", "Calls/CA1.json")
    result = await quote([("TimeLimit", "99999"), ("Twiml", "<Response/>")], update)
    assert result.micros == 0
    assert result.body is not None
    assert dict(parse_qsl(result.body.decode()))["TimeLimit"] == "600"
    hang_up = await quote([("Status", "completed")], update)
    assert (hang_up.micros, hang_up.body) == (0, None)


async def test_a_free_channel_price_is_honoured() -> None:
    prices: Any = {"sms_usd_per_segment": {"whatsapp:": "0", "default": "0.5"}}
    assert (await quote([("To", "whatsapp:+15005550006")], **prices)).micros == 0
