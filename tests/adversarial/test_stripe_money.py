"""Class 2: a Stripe write is free only when it can't move money.

The recording upstream stands in for Stripe: it answers every request (the pricer's look-ups
too) with the object the test sets, so each test knows exactly what Stripe would say.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.adversarial.rawhttp import RawAnswer, send
from tests.adversarial.test_forwarding import FORM
from tests.recorder import Proxy, Recorder


async def call(
    proxy: Proxy,
    token: str,
    method: str,
    path: str,
    body: bytes = b"",
    *headers: tuple[str, str],
) -> RawAnswer:
    sent = [("Authorization", f"Bearer {token}"), ("Content-Type", FORM), *headers]
    return await send(proxy.url, method, "/stripe" + path, sent, body)


def forwarded(recorder: Recorder) -> list[tuple[str, str]]:
    """What reached Stripe, pricing look-ups left out."""
    return [
        (method, target)
        for (method, target, headers, _) in recorder.requests
        if not (method == "GET" and "Idempotency-Key" not in headers and target.count("/") == 3)
        or method != "GET"
    ]


async def test_switching_a_payment_intents_currency_is_priced(
    proxy: Proxy, recorder: Recorder
) -> None:
    # 100,000 VND is $4.50; the same number of pence is $1,400.
    key = await proxy.issue(daily_usd_cap=10)
    recorder.answer = {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 100000,
        "currency": "vnd",
    }
    created = await call(
        proxy, key["token"], "POST", "/v1/payment_intents", b"amount=100000&currency=vnd"
    )
    assert created.status == 200
    switched = await call(proxy, key["token"], "POST", "/v1/payment_intents/pi_1", b"currency=gbp")
    assert (switched.status, switched.json()["code"]) == (429, "cap_exhausted")
    assert [m for m, _ in forwarded(recorder) if m == "POST"] == ["POST"]


async def test_confirming_an_intent_this_key_never_counted_is_priced(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue(daily_usd_cap=15)
    intent = {"id": "pi_declined", "object": "payment_intent", "amount": 1000, "currency": "usd"}
    recorder.answer, recorder.status = {"error": {"type": "card_error"}}, 402
    # Stripe declines the create: the reservation goes back, but the intent exists.
    declined = await call(
        proxy, key["token"], "POST", "/v1/payment_intents", b"amount=1000&currency=usd&confirm=true"
    )
    assert declined.status == 402
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "0.00"
    recorder.answer, recorder.status = {**intent, "status": "succeeded"}, 200
    confirmed = await call(proxy, key["token"], "POST", "/v1/payment_intents/pi_declined/confirm")
    assert confirmed.status == 200
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "10.00"
    # An intent made elsewhere, confirmed through this key, counts just the same: a second
    # $10 doesn't fit the $15 cap.
    recorder.answer = {**intent, "id": "pi_elsewhere"}
    again = await call(proxy, key["token"], "POST", "/v1/payment_intents/pi_elsewhere/confirm")
    assert (again.status, again.json()["code"]) == (429, "cap_exhausted")


async def test_confirming_an_intent_this_key_created_costs_nothing_more(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue(daily_usd_cap=15)
    recorder.answer = {
        "id": "pi_mine",
        "object": "payment_intent",
        "amount": 1000,
        "currency": "usd",
    }
    assert (
        await call(proxy, key["token"], "POST", "/v1/payment_intents", b"amount=1000&currency=usd")
    ).status == 200
    confirmed = await call(proxy, key["token"], "POST", "/v1/payment_intents/pi_mine/confirm")
    assert confirmed.status == 200
    assert (await proxy.key(key["id"]))["spent_today_usd"] == "10.00"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/customers", b"email=a%40b.c&balance=500000"),
        ("POST", "/v1/customers/cus_1", b"balance=500000"),
        ("DELETE", "/v1/subscriptions/sub_1?invoice_now=true", b""),
        ("POST", "/v1/payment_intents/pi_1/increment_authorization", b"amount=500000"),
    ],
)
async def test_parameters_and_endpoints_that_move_money_are_not_free(
    proxy: Proxy, recorder: Recorder, method: str, path: str, body: bytes
) -> None:
    key = await proxy.issue()  # a $100 cap
    recorder.answer = {"id": "pi_1", "amount": 1000, "currency": "usd", "balance": 0}
    answer = await call(proxy, key["token"], method, path, body)
    # Refused as unpriced, or priced at what it may move ($5,000: past the cap).
    assert (answer.status, answer.json()["code"]) in {
        (403, "unpriced_endpoint"),
        (429, "cap_exhausted"),
    }
    assert [m for m, *_ in recorder.requests if m != "GET"] == []


# -- merchant scope ------------------------------------------------------------------------


async def test_a_key_without_an_account_refuses_any_account(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue()
    for header in (("Stripe-Account", "acct_other"), ("Stripe-Context", "ctx_1")):
        answer = await call(proxy, key["token"], "GET", "/v1/customers", b"", header)
        assert (answer.status, answer.json()["code"]) == (403, "account_not_allowed")
        assert answer.json()["error"]["code"] == "account_not_allowed"
    assert recorder.requests == []


async def test_a_key_with_an_account_acts_on_that_account_only(
    proxy: Proxy, recorder: Recorder
) -> None:
    key = await proxy.issue(stripe_account="acct_mine")
    assert key["stripe_account"] == "acct_mine"
    assert (await call(proxy, key["token"], "GET", "/v1/customers")).status == 200
    same = await call(
        proxy, key["token"], "GET", "/v1/customers", b"", ("Stripe-Account", "acct_mine")
    )
    assert same.status == 200
    other = await call(
        proxy, key["token"], "GET", "/v1/customers", b"", ("Stripe-Account", "acct_other")
    )
    assert (other.status, other.json()["code"]) == (403, "account_not_allowed")
    sent = [[v for k, v in raw if k.lower() == b"stripe-account"] for raw in recorder.raw_headers]
    assert sent == [[b"acct_mine"], [b"acct_mine"]]


async def test_stripe_account_is_for_stripe_keys_only(proxy: Proxy) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{proxy.url}/v1/keys",
            json={
                "vendor": "twilio",
                "allowed_endpoints": ["/**"],
                "daily_usd_cap": 1,
                "expires_in": "1m",
                "stripe_account": "acct_1",
            },
            headers={"Authorization": f"Bearer {proxy.admin_token}"},
        ) as response,
    ):
        body: dict[str, Any] = await response.json()
    assert (response.status, body["code"], body["param"]) == (400, "bad_request", "stripe_account")
