"""@vault_key: a key per call, hidden from the signature a framework shows a model."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import attrs
import pytest

import keybrake
from keybrake import ConfigurationError, Keybrake, KeySpec, VaultKey, sync, vault_key
from tests.conftest import SEED_ENDPOINTS

_T = typing.TypeVar("_T")

if typing.TYPE_CHECKING:
    # Known to a type checker only: at run time the hints that name it can't be resolved.
    class NotResolvable(typing.Generic[_T]): ...


def test_the_key_parameter_is_hidden() -> None:
    kb = Keybrake("kb_admin_x", api_url="http://127.0.0.1:9", proxy_url="http://127.0.0.1:9")

    @vault_key("stripe", ["/v1/refunds"], cap=100, ttl="2m", client=kb)
    async def refund(charge_id: str, amount: int, vk: VaultKey) -> dict[str, Any]:
        """Refund a charge."""
        return {}

    assert list(inspect.signature(refund).parameters) == ["charge_id", "amount"]
    assert "vk" not in refund.__annotations__
    assert "vk" not in typing.get_type_hints(refund)
    assert refund.__name__ == "refund"
    assert refund.__doc__ == "Refund a charge."
    assert inspect.iscoroutinefunction(refund)
    assert not hasattr(refund, "__wrapped__")


def test_a_plain_def_needs_a_sync_vault_key() -> None:
    with pytest.raises(TypeError, match=r"plain 'def': its key is a keybrake\.sync\.VaultKey"):

        @vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60)
        def refund(vk: VaultKey) -> None: ...


def test_an_async_def_needs_an_async_vault_key() -> None:
    with pytest.raises(TypeError, match=r"'async def': its key is a keybrake\.VaultKey"):

        @vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60)
        async def refund(vk: sync.VaultKey) -> None: ...


def test_the_client_must_be_of_the_functions_kind() -> None:
    kb = Keybrake("kb_admin_x", api_url="http://127.0.0.1:9", proxy_url="http://127.0.0.1:9")
    with pytest.raises(TypeError, match=r"client must be a keybrake\.sync\.Keybrake"):

        @vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60, client=kb)
        def refund(vk: sync.VaultKey) -> None: ...

    sync_kb = sync.Keybrake("kb_admin_x", api_url="http://127.0.0.1:9")
    with pytest.raises(TypeError, match=r"client must be a keybrake\.Keybrake"):

        @vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60, client=sync_kb)
        async def refund_async(vk: VaultKey) -> None: ...


def test_a_vault_key_parameter_is_required() -> None:
    with pytest.raises(TypeError, match="annotated 'VaultKey'"):

        @vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60)
        async def refund(charge_id: str) -> None: ...


async def test_each_call_issues_uses_and_revokes_a_key(kb: Keybrake) -> None:
    seen: list[str] = []

    @vault_key("stripe", SEED_ENDPOINTS, cap=100, ttl="1m", client=kb)
    async def charge(amount: int, vk: VaultKey, *, currency: str = "usd") -> str:
        seen.append(vk.id)
        pi = await vk.stripe.payment_intents.create(amount=amount, currency=currency)
        return pi.id

    first = await charge(500)
    second = await charge(amount=700, currency="eur")
    assert first.startswith("pi_")
    assert second.startswith("pi_")
    assert len(set(seen)) == 2
    for key_id in seen:
        info = await kb.get_key(key_id)
        assert info.status == "revoked"
        assert info.label.endswith("charge")


async def test_key_options_pass_through(kb: Keybrake) -> None:
    @vault_key(
        "stripe",
        SEED_ENDPOINTS,
        cap=1,
        ttl="1m",
        client=kb,
        keepalive=False,
        label="refunds",
        metadata={"team": "billing"},
    )
    async def check(vk: VaultKey) -> str:
        return vk.id

    info = await kb.get_key(await check())
    assert info.label == "refunds"
    assert info.metadata == {"team": "billing"}


async def test_a_spec_describes_the_key(kb: Keybrake) -> None:
    refunds = KeySpec("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", metadata={"team": "billing"})

    @vault_key(refunds, client=kb)
    async def check(vk: VaultKey) -> str:
        assert vk.spec.metadata == {"team": "billing"}
        return vk.id

    @vault_key(attrs.evolve(refunds, label="refunds"), client=kb)
    async def labelled(vk: VaultKey) -> str:
        return vk.id

    info = await kb.get_key(await check())
    assert info.label.endswith("check")  # a spec without a label: the function's name
    assert info.metadata == {"team": "billing"}
    assert (await kb.get_key(await labelled())).label == "refunds"


def test_bad_options_fail_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match="no-slash"):
        vault_key("stripe", ["no-slash"], cap=1, ttl=60)
    with pytest.raises(ConfigurationError, match="Stripe keys only"):
        vault_key("twilio", ["/x"], cap=1, ttl=60, stripe_account="acct_1")
    with pytest.raises(ConfigurationError, match="api_url"):
        vault_key("stripe", ["/x"], cap=1, ttl=60, api_url="ftp://nope")
    with pytest.raises(TypeError, match="unknown vault key option"):
        vault_key("stripe", ["/x"], cap=1, ttl=60, clinet=None)  # type: ignore[call-arg]


def test_a_spec_is_not_given_twice() -> None:
    spec = KeySpec("stripe", ["/x"], cap=1, ttl=60)
    with pytest.raises(TypeError, match="cap, metadata in the spec"):
        vault_key(spec, cap=2, metadata={"a": "b"})
    with pytest.raises(TypeError, match="endpoints, cap and ttl"):
        vault_key("stripe", ["/x"])


def test_a_key_named_by_its_module_is_found_when_other_hints_cant_be_resolved() -> None:
    """A Celery task's ``self: Task[Any, Any]`` can't be resolved at run time (``Task`` is
    not subscriptable there), so every hint stays text: ``sync.VaultKey`` must still count."""

    def tool(self: NotResolvable[Any], vk: sync.VaultKey) -> None: ...

    def async_tool(vk: keybrake.VaultKey, self: NotResolvable[Any]) -> None: ...

    assert (
        "vk"
        not in inspect.signature(
            vault_key("stripe", SEED_ENDPOINTS, cap=1, ttl="1m")(tool)
        ).parameters
    )
    with pytest.raises(TypeError, match="plain 'def'"):
        vault_key("stripe", SEED_ENDPOINTS, cap=1, ttl="1m")(async_tool)
