"""The official ``stripe`` SDK as a client of the proxy, with localstripe behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import stripe

from keybrake import Keybrake
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.conftest import RunningServer

T = TypeVar("T")

CARD: Any = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


async def off_loop(fn: Callable[[], T]) -> T:
    """The SDK is synchronous; the server runs on this loop, so call it from a thread."""
    return await asyncio.to_thread(fn)


async def stripe_for(
    kb: Keybrake, server: RunningServer, cap: str, **options: Any
) -> tuple[stripe.StripeClient, str]:
    issued = await kb.issue_key(
        "stripe",
        [
            "/v1/payment_intents",
            "/v1/payment_intents/*",
            "/v1/payment_methods",
            "/v1/refunds",
            "/v1/charges/*",
            "POST /v1/customers",
        ],
        cap=cap,
        ttl="5m",
        **options,
    )
    client = stripe.StripeClient(
        issued.token, base_addresses={"api": f"{server.url}/stripe"}, max_network_retries=0
    )
    return client, issued.id


async def spent(server: RunningServer, key_id: str) -> str:
    async with server.client() as kb:
        info = await kb.get_key(key_id)
    return str(info.spent_today_usd)


async def test_create_retrieve_list_refund(server: RunningServer, kb: Keybrake) -> None:
    client, key_id = await stripe_for(kb, server, cap="100")
    v1 = client.v1
    method = await off_loop(
        lambda: v1.payment_methods.create(params={"type": "card", "card": CARD})
    )
    customer = await off_loop(lambda: v1.customers.create(params={"email": "a@example.com"}))
    intent = await off_loop(
        lambda: v1.payment_intents.create(
            params={
                "amount": 2000,
                "currency": "usd",
                "payment_method": method.id,
                "confirm": True,
                "customer": customer.id,
            }
        )
    )
    assert intent.status == "succeeded"
    assert (await off_loop(lambda: v1.payment_intents.retrieve(intent.id))).id == intent.id
    listed = await off_loop(
        lambda: [pi.id for pi in v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()]
    )
    assert intent.id in listed
    assert await spent(server, key_id) == "20.00"

    refund = await off_loop(
        lambda: v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    )
    assert (refund.amount, refund.currency) == (500, "usd")
    assert await spent(server, key_id) == "25.00"

    # Without an amount, the refund is bounded by the charge, settled at what was refunded.
    rest = await off_loop(lambda: v1.refunds.create(params={"payment_intent": intent.id}))
    assert await spent(server, key_id) == f"{25 + rest.amount / 100:.2f}"


async def test_idempotent_retry_is_charged_once(server: RunningServer, kb: Keybrake) -> None:
    client, key_id = await stripe_for(kb, server, cap="100")
    params: Any = {"amount": 3000, "currency": "eur"}
    options: Any = {"idempotency_key": "agent-run-7-step-3"}
    first = await off_loop(lambda: client.v1.payment_intents.create(params=params, options=options))
    await off_loop(lambda: client.v1.payment_intents.create(params=params, options=options))
    # Stripe replays the first answer for a repeated Idempotency-Key (localstripe doesn't
    # implement that, so it made a second object); either way it is counted once.
    assert first.amount == 3000
    assert await spent(server, key_id) == "36.00"  # 30 EUR at the 1.20 upper-bound rate
    store = SQLiteStore(server.db_path)
    await store.open()
    try:
        ledger = await store.ledger(key_id)
    finally:
        await store.close()
    assert [(e.state, e.amount) for e in ledger] == [("settled", 36_000_000)]

    # A new idempotency key is a new request and is counted again.
    await off_loop(
        lambda: client.v1.payment_intents.create(params=params, options={"idempotency_key": "b"})
    )
    assert await spent(server, key_id) == "72.00"


async def test_refusals_are_proper_stripe_errors(server: RunningServer, kb: Keybrake) -> None:
    client, _ = await stripe_for(kb, server, cap="10")
    with pytest.raises(stripe.RateLimitError) as capped:
        await off_loop(
            lambda: client.v1.payment_intents.create(params={"amount": 1001, "currency": "usd"})
        )
    body: Any = capped.value.json_body
    assert body["code"] == "cap_exhausted"
    assert capped.value.http_status == 429
    # Stripe's 401 and 429 classes take no code of their own: it is on the error object.
    assert capped.value.error is not None
    assert capped.value.error.code == "cap_exhausted"
    with pytest.raises(stripe.PermissionError) as scoped:
        await off_loop(lambda: client.v1.payouts.list())
    assert scoped.value.error is not None
    assert scoped.value.error.code == "endpoint_not_allowed"
    with pytest.raises(stripe.InvalidRequestError) as bad:
        await off_loop(
            lambda: client.v1.payment_intents.create(params={"amount": 100, "currency": "xyz"})
        )
    assert bad.value.code == "unsupported_currency"


async def test_a_revoked_key_is_an_authentication_error_with_keybrakes_code(
    server: RunningServer, kb: Keybrake
) -> None:
    client, key_id = await stripe_for(kb, server, cap="10")
    await kb.revoke_key(key_id)
    with pytest.raises(stripe.AuthenticationError) as refused:
        await off_loop(lambda: client.v1.payment_intents.list())
    assert refused.value.http_status == 401
    assert refused.value.error is not None
    assert refused.value.error.code == "key_revoked"
    live, _ = await stripe_for(kb, server, cap="10")
    with pytest.raises(stripe.PermissionError) as scoped:
        await off_loop(
            lambda: live.v1.payment_intents.list(options={"stripe_account": "acct_someone"})
        )
    assert scoped.value.error is not None
    assert scoped.value.error.code == "account_not_allowed"
