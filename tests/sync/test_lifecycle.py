"""keybrake.sync.VaultKey: issued on enter, used through vk.stripe, revoked however it ends."""

from __future__ import annotations

import pytest

from keybrake.sync import Keybrake, VaultKey
from keybrake.vendors.stripe.client import PaymentIntent
from tests.conftest import SEED_ENDPOINTS


class Boom(Exception):
    pass


def test_issued_used_and_revoked_on_exit(sync_kb: Keybrake) -> None:
    with VaultKey("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=sync_kb) as vk:
        assert vk.id.startswith("vk_")
        assert sync_kb.get_key(vk.id).status == "active"
        pi = vk.stripe.payment_intents.create(amount=2000, currency="usd")
        assert isinstance(pi, PaymentIntent)
        assert pi.amount == 2000
        again = vk.stripe.payment_intents.retrieve(pi.id)
        assert again.id == pi.id
        assert pi.id in [intent.id for intent in vk.stripe.payment_intents.list()]
    assert sync_kb.get_key(vk.id).status == "revoked"


def test_revoked_when_the_block_raises(sync_kb: Keybrake) -> None:
    with (
        pytest.raises(Boom),
        VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=sync_kb) as vk,
    ):
        raise Boom
    assert sync_kb.get_key(vk.id).status == "revoked"
