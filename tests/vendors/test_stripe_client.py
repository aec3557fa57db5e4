"""Every method of ``vk.stripe``, through the proxy, against localstripe."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keybrake import Keybrake, ProxyRefused, StripeError, VaultKey
from keybrake.vendors.stripe.client import (
    Charge,
    Customer,
    PaymentIntent,
    PaymentMethod,
    Refund,
    encode_form,
)

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


@pytest.fixture
async def vk(kb: Keybrake) -> AsyncIterator[VaultKey]:
    async with VaultKey("stripe", ["/v1/**"], cap=10_000, ttl="5m", client=kb) as key:
        yield key


async def new_card(vk: VaultKey) -> str:
    method = await vk.stripe.request("POST", "/v1/payment_methods", {"type": "card", "card": CARD})
    return str(method["id"])


def test_form_encoding_matches_stripe_python() -> None:
    assert encode_form(
        {
            "amount": 100,
            "confirm": True,
            "capture": False,
            "metadata": {"order": "7", "note": None},
            "expand": ["customer", "latest_charge"],
            "items": [{"price": "p_1", "quantity": 2}],
            "skip": None,
        }
    ) == [
        ("amount", "100"),
        ("confirm", "true"),
        ("capture", "false"),
        ("metadata[order]", "7"),
        ("expand[0]", "customer"),
        ("expand[1]", "latest_charge"),
        ("items[0][price]", "p_1"),
        ("items[0][quantity]", "2"),
    ]


async def test_payment_intents(vk: VaultKey) -> None:
    intents = vk.stripe.payment_intents
    created = await intents.create(amount=1500, currency="usd", metadata={"run": "42"})
    assert isinstance(created, PaymentIntent)
    assert created.metadata == {"run": "42"}
    assert created.created is not None
    assert created.created.tzinfo is not None
    assert (await intents.retrieve(created.id)).amount == 1500
    updated = await intents.update(created.id, metadata={"run": "43"})
    assert updated.metadata["run"] == "43"
    card = await new_card(vk)
    to_confirm = await intents.create(amount=900, currency="usd", payment_method=card)
    confirmed = await intents.confirm(to_confirm.id)
    assert confirmed.status == "succeeded"

    manual = await intents.create(
        amount=700, currency="usd", payment_method=card, capture_method="manual", confirm=True
    )
    assert manual.status == "requires_capture"
    assert (await intents.capture(manual.id)).status == "succeeded"

    doomed = await intents.create(amount=100, currency="usd")
    assert (await intents.cancel(doomed.id)).status == "canceled"

    ids = {created.id, to_confirm.id, manual.id, doomed.id}
    seen = [pi.id async for pi in intents.list(limit=2)]  # pages of 2, fetched as needed
    assert ids <= set(seen)
    assert len(seen) == len(set(seen))


async def test_customers(vk: VaultKey) -> None:
    customer = await vk.stripe.customers.create(email="ada@example.com", name="Ada")
    assert isinstance(customer, Customer)
    assert (await vk.stripe.customers.retrieve(customer.id)).email == "ada@example.com"
    assert (await vk.stripe.customers.update(customer.id, name="Ada L.")).name == "Ada L."
    assert customer.id in [c.id async for c in vk.stripe.customers.list()]


async def test_charges_refunds_and_payment_methods(vk: VaultKey) -> None:
    customer = await vk.stripe.customers.create(email="bob@example.com")
    card = await new_card(vk)
    method = await vk.stripe.payment_methods.attach(card, customer=customer.id)
    assert isinstance(method, PaymentMethod)
    assert method.customer == customer.id
    assert (await vk.stripe.payment_methods.retrieve(card)).type == "card"

    intent = await vk.stripe.payment_intents.create(
        amount=4000, currency="eur", payment_method=card, customer=customer.id, confirm=True
    )
    assert intent.latest_charge is not None
    charge = await vk.stripe.charges.retrieve(intent.latest_charge)
    assert isinstance(charge, Charge)
    assert (charge.amount, charge.currency, charge.paid) == (4000, "eur", True)
    assert charge.id in [c.id async for c in vk.stripe.charges.list()]

    refund = await vk.stripe.refunds.create(payment_intent=intent.id, amount=1000)
    assert isinstance(refund, Refund)
    assert (refund.amount, refund.currency, refund.charge) == (1000, "eur", charge.id)
    assert (await vk.stripe.refunds.retrieve(refund.id)).amount == 1000
    assert refund.id in [r.id async for r in vk.stripe.refunds.list()]
    assert (await vk.stripe.charges.retrieve(charge.id)).amount_refunded == 1000


async def test_vendor_errors_carry_stripes_fields(vk: VaultKey) -> None:
    with pytest.raises(StripeError) as caught:
        await vk.stripe.payment_intents.retrieve("pi_doesnotexist")
    error = caught.value
    assert error.status == 404
    assert error.type == "invalid_request_error"
    assert error.vendor_fields["message"]
    # A refund of an unknown charge can't be bounded: the proxy refuses it itself.
    with pytest.raises(ProxyRefused) as bad:
        await vk.stripe.refunds.create(charge="ch_nope")
    assert (bad.value.status, bad.value.code) == (400, "bad_request")
