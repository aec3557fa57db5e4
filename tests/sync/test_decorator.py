"""@vault_key on a plain def: a fresh keybrake.sync.VaultKey per call, hidden from frameworks."""

from __future__ import annotations

import inspect
import typing

import pytest

from keybrake import ConfigurationError, vault_key
from keybrake.sync import Keybrake, VaultKey
from tests.conftest import SEED_ENDPOINTS


def test_each_call_issues_uses_and_revokes_a_sync_key(sync_kb: Keybrake) -> None:
    seen: list[VaultKey] = []

    @vault_key("stripe", SEED_ENDPOINTS, cap=100, ttl="1m", client=sync_kb)
    def charge(amount: int, vk: VaultKey, *, currency: str = "usd") -> str:
        """Charge an amount."""
        seen.append(vk)
        pi = vk.stripe.payment_intents.create(amount=amount, currency=currency)
        return str(pi.id)

    assert list(inspect.signature(charge).parameters) == ["amount", "currency"]
    assert typing.get_type_hints(charge) == {"amount": int, "currency": str, "return": str}
    assert not inspect.iscoroutinefunction(charge)
    assert charge.__doc__ == "Charge an amount."

    assert charge(500).startswith("pi_")
    assert charge(amount=700, currency="eur").startswith("pi_")
    assert len({vk.id for vk in seen}) == 2
    assert all(isinstance(vk, VaultKey) for vk in seen)
    for vk in seen:
        info = sync_kb.get_key(vk.id)
        assert info.status == "revoked"
        assert info.label.endswith("charge")


def test_revoked_when_the_function_raises(sync_kb: Keybrake) -> None:
    seen: list[str] = []

    @vault_key("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", client=sync_kb)
    def fail(vk: VaultKey) -> None:
        seen.append(vk.id)
        raise ValueError("tool failed")

    with pytest.raises(ValueError, match="tool failed"):
        fail()
    assert sync_kb.get_key(seen[0]).status == "revoked"


def test_a_bad_call_issues_no_key(sync_kb: Keybrake) -> None:
    @vault_key("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", client=sync_kb)
    def tool(amount: int, vk: VaultKey) -> None: ...

    with pytest.raises(TypeError):
        tool(1, 2, 3)
    assert list(sync_kb.list_keys()) == []


def test_cancel_on_loss_is_refused_for_a_plain_def() -> None:
    with pytest.raises(ConfigurationError, match="cancel_on_loss"):

        @vault_key("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", token="t", cancel_on_loss=True)
        def tool(vk: VaultKey) -> None: ...
