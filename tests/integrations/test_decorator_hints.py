"""@vault_key as frameworks read it: resolved type hints, a context parameter kept first."""

from __future__ import annotations  # every annotation below is a string until resolved

import inspect
import typing
from decimal import Decimal
from typing import Annotated, Any

import attrs

from keybrake import Keybrake, VaultKey, vault_key
from tests.conftest import SEED_ENDPOINTS

OFFLINE = Keybrake("kb_admin_x", api_url="http://127.0.0.1:9", proxy_url="http://127.0.0.1:9")


@attrs.frozen
class Context:
    """Stands for a framework's context (``RunContextWrapper``, ``RunContext``, arq's ctx)."""

    run_id: str


@vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60, client=OFFLINE)
async def refund(ctx: Context, amount: Decimal, vk: VaultKey, note: str | None = None) -> str:
    return ""


def test_string_annotations_are_resolved_in_the_functions_module() -> None:
    # keybrake._decorator has neither Context nor Decimal: the hints must already be types.
    assert typing.get_type_hints(refund) == {
        "ctx": Context,
        "amount": Decimal,
        "note": str | None,
        "return": str,
    }
    signature = inspect.signature(refund)
    assert [p.annotation for p in signature.parameters.values()] == [Context, Decimal, str | None]
    assert signature.return_annotation is str


def test_the_context_parameter_stays_first() -> None:
    assert list(inspect.signature(refund).parameters) == ["ctx", "amount", "note"]


def test_annotated_vault_key_is_the_key_and_extras_are_kept() -> None:
    @vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60, client=OFFLINE)
    async def tool(
        amount: Annotated[int, "in cents"], vk: Annotated[VaultKey, "injected"]
    ) -> None: ...

    assert list(inspect.signature(tool).parameters) == ["amount"]
    assert typing.get_type_hints(tool, include_extras=True) == {
        "amount": Annotated[int, "in cents"],
        "return": type(None),
    }


def test_unresolvable_annotations_fall_back_to_strings() -> None:
    @vault_key("stripe", ["/v1/refunds"], cap=1, ttl=60, client=OFFLINE)
    async def tool(order: NotDefinedAnywhere, vk: VaultKey) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    assert tool.__annotations__ == {"order": "NotDefinedAnywhere", "return": "None"}
    assert list(inspect.signature(tool).parameters) == ["order"]


async def test_a_positional_context_reaches_the_function(kb: Keybrake) -> None:
    seen: list[Any] = []

    @vault_key("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    async def charge(ctx: Context, /, amount: int, vk: VaultKey) -> str:
        seen.append(ctx)
        return (await vk.stripe.payment_intents.create(amount=amount, currency="usd")).id

    assert (await charge(Context("r1"), 500)).startswith("pi_")
    assert (await charge(Context("r2"), amount=600)).startswith("pi_")
    assert seen == [Context("r1"), Context("r2")]
    assert {k.status async for k in kb.list_keys()} == {"revoked"}
