"""KeySpec: a key's description, checked once, where it is written down."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import attrs
import pytest

from keybrake import Budget, ConfigurationError, Keybrake, KeySpec, VaultKey
from tests.conftest import SEED_ENDPOINTS

GOOD: dict[str, Any] = {"vendor": "stripe", "endpoints": SEED_ENDPOINTS, "cap": 10, "ttl": "1m"}


def test_values_are_normalised() -> None:
    metadata = {"team": "billing"}
    spec = KeySpec(
        "stripe",
        ["/v1/refunds"],
        "12.50",
        "2m",
        label="refunds",
        max_lifetime="1h",
        metadata=metadata,
        stripe_account="acct_1Nv0FGQ9RKHgCVdK",
    )
    metadata["team"] = "changed"  # the spec holds its own copy
    assert spec.endpoints == ("/v1/refunds",)
    assert spec.cap == Decimal("12.50")
    assert spec.ttl == timedelta(minutes=2)
    assert spec.ttl_seconds == 120
    assert spec.max_lifetime == timedelta(hours=1)
    assert spec.metadata == {"team": "billing"}
    assert spec.keepalive is True
    assert spec == KeySpec(
        "stripe",
        ("/v1/refunds",),
        Decimal("12.50"),
        120,
        label="refunds",
        max_lifetime=3600,
        metadata={"team": "billing"},
        stripe_account="acct_1Nv0FGQ9RKHgCVdK",
    )
    assert hash(spec) == hash(attrs.evolve(spec))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.cap = Decimal(1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"vendor": ""}, "vendor"),
        ({"vendor": "  "}, "vendor"),
        ({"vendor": 3}, "vendor"),
        ({"endpoints": []}, "endpoints"),
        ({"endpoints": "/v1/refunds"}, "endpoints"),  # a bare string, not a list
        ({"endpoints": {"/v1/refunds"}}, "endpoints"),
        ({"endpoints": ["no-slash"]}, "no-slash"),
        ({"endpoints": ["/v1/**/x"]}, r"\*\*"),
        ({"endpoints": ["FETCH /v1/x"]}, "method"),
        ({"endpoints": ["/v1/../admin"]}, "dot segment"),
        ({"endpoints": [3]}, "string"),
        ({"cap": 0.5}, "cap"),
        ({"cap": "-1"}, "cap"),
        ({"cap": "lots"}, "cap"),
        ({"cap": "0.0000001"}, "cap"),
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"max_lifetime": "forever"}, "max_lifetime"),
        ({"max_lifetime": "30s"}, "shorter than ttl"),
        ({"metadata": {"n": 1}}, "metadata"),
        ({"metadata": {1: "n"}}, "metadata"),
        ({"metadata": [("k", "v")]}, "metadata"),
        ({"label": 42}, "label"),
        ({"keepalive": "yes"}, "keepalive"),
        ({"stripe_account": "cus_123"}, "acct_"),
        ({"stripe_account": "acct_"}, "acct_"),
        ({"vendor": "twilio", "stripe_account": "acct_123"}, "Stripe keys only"),
        ({"rate_limit": "10/d"}, "rate_limit"),
        ({"rate_limit": "0/s"}, "rate_limit"),
        ({"rate_limit": "1000000/h"}, "rate_limit"),
        ({"rate_limit": 10}, "rate_limit"),
        ({"max_requests": 0}, "max_requests"),
        ({"max_requests": True}, "max_requests"),
        ({"max_requests": "5"}, "max_requests"),
        ({"budget": 42}, "budget"),
        ({"budget": Budget(cap=1, ttl="1m", token="kb_x")}, "not issued yet"),
    ],
)
def test_each_bad_value_is_a_configuration_error(changes: dict[str, Any], match: str) -> None:
    args = {**GOOD, **changes}
    positional = [args.pop(name) for name in ("vendor", "endpoints", "cap", "ttl")]
    with pytest.raises(ConfigurationError, match=match):
        KeySpec(*positional, **args)
    with pytest.raises(ConfigurationError, match=match):  # VaultKey checks the same, once
        VaultKey(*positional, **args)


def test_evolve_checks_again() -> None:
    spec = KeySpec(**GOOD)
    with pytest.raises(ConfigurationError, match="cap"):
        attrs.evolve(spec, cap=-1)


def test_from_spec_keeps_the_spec() -> None:
    kb = Keybrake("kb_admin_x", api_url="http://127.0.0.1:9", proxy_url="http://127.0.0.1:9")
    spec = KeySpec("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", label="l", keepalive=False)
    vk = VaultKey.from_spec(spec, client=kb)
    assert vk.spec is spec
    assert (vk.vendor, vk.endpoints, vk.cap, vk.ttl_seconds) == (
        "stripe",
        tuple(SEED_ENDPOINTS),
        Decimal(5),
        60,
    )
    assert (vk.label, vk.keepalive, vk.client) == ("l", False, kb)
    with pytest.raises(TypeError, match="KeySpec"):
        VaultKey.from_spec("stripe", client=kb)  # type: ignore[arg-type]


async def test_a_spec_issues_its_key(kb: Keybrake) -> None:
    spec = KeySpec(
        "stripe", SEED_ENDPOINTS, cap=50, ttl="1m", label="from-spec", metadata={"run": "7"}
    )
    async with VaultKey.from_spec(spec, client=kb) as vk:
        pi = await vk.stripe.payment_intents.create(amount=700, currency="usd")
        assert pi.amount == 700
    info = await kb.get_key(vk.id)
    assert (info.label, dict(info.metadata)) == ("from-spec", {"run": "7"})
    assert info.daily_usd_cap == 50
    assert info.status == "revoked"

    issued = await kb.issue_key(spec)
    assert (issued.label, issued.vendor) == ("from-spec", "stripe")
    await kb.revoke_key(issued.id)


async def test_issue_key_takes_a_spec_or_its_fields_not_both(kb: Keybrake) -> None:
    spec = KeySpec(**GOOD)
    with pytest.raises(TypeError, match="cap"):
        await kb.issue_key(spec, cap=5)
    with pytest.raises(TypeError, match="endpoints, cap and ttl"):
        await kb.issue_key("stripe")
    with pytest.raises(ConfigurationError, match="no-slash"):
        await kb.issue_key("stripe", ["no-slash"], cap=1, ttl=60)


def test_brakes_are_kept_as_given() -> None:
    spec = KeySpec(**GOOD, rate_limit="10/m", max_requests=100, budget="bud_1")
    assert (spec.rate_limit, spec.max_requests, spec.budget) == ("10/m", 100, "bud_1")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"label": "run\u200b-42"}, "label may not hold"),
        ({"label": "x" * 201}, "at most 200"),
        ({"metadata": {"user": "a\u202eb"}}, "metadata may not hold"),
        ({"metadata": {"k" * 65: "v"}}, "names are 1 to 64"),
        ({"metadata": {"k": "v" * 513}}, "values at most 512"),
        ({"metadata": {f"k{n}": "v" * 500 for n in range(20)}}, "8192 bytes"),
    ],
)
def test_labels_and_metadata_the_server_refuses_fail_where_the_key_is_defined(
    options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        KeySpec("stripe", ["/v1/refunds"], cap=1, ttl="1m", **options)
