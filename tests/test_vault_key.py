"""VaultKey against the real server and localstripe: use, cap, scope, revoke on every exit."""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import datetime, timezone

import pytest

from keybrake import (
    ConfigurationError,
    EndpointNotAllowed,
    IssuanceError,
    Keybrake,
    KeybrakeError,
    ProxyRefused,
    SpendCapExceeded,
    VaultKey,
    VaultKeyRevoked,
)
from keybrake.vendors.stripe.client import PaymentIntent
from tests.conftest import SEED_ENDPOINTS, RunningServer


def stripe_key(kb: Keybrake, **options: object) -> VaultKey:
    options.setdefault("cap", 500)
    options.setdefault("ttl", "5m")
    return VaultKey("stripe", SEED_ENDPOINTS, client=kb, **options)  # type: ignore[arg-type]


async def test_create_payment_intent_through_the_proxy(kb: Keybrake) -> None:
    async with stripe_key(kb, label="run-42") as vk:
        assert vk.id.startswith("vk_")
        assert vk.token.startswith("vault_key_")
        assert vk.expires_at > datetime.now(timezone.utc)
        pi = await vk.stripe.payment_intents.create(amount=2000, currency="usd")
        assert isinstance(pi, PaymentIntent)
        assert pi.id.startswith("pi_")
        assert (pi.amount, pi.currency) == (2000, "usd")
        assert pi.status
        assert pi.raw["object"] == "payment_intent"
        again = await vk.stripe.payment_intents.retrieve(pi.id)
        assert again.id == pi.id
        info = await kb.get_key(vk.id)
        assert info.label == "run-42"
        assert str(info.spent_today_usd) == "20.00"


async def test_cap_exhaustion_raises_spend_cap_exceeded(kb: Keybrake) -> None:
    async with stripe_key(kb, cap="50") as vk:
        for _ in range(4):
            await vk.stripe.payment_intents.create(amount=1250, currency="usd")
        with pytest.raises(SpendCapExceeded) as caught:
            await vk.stripe.payment_intents.create(amount=1, currency="usd")
    assert caught.value.status == 429
    assert caught.value.code == "cap_exhausted"
    assert str(caught.value.daily_usd_cap) == "50.00"
    assert str(caught.value.spent_today_usd) == "50.00"
    assert str(caught.value.attempted_usd) == "0.01"


async def test_disallowed_endpoint_raises_endpoint_not_allowed(kb: Keybrake) -> None:
    async with stripe_key(kb) as vk:
        with pytest.raises(EndpointNotAllowed) as caught:
            await vk.stripe.request("GET", "/v1/customers")
    assert caught.value.status == 403
    assert caught.value.attempted == "GET /v1/customers"
    assert caught.value.allowed_endpoints == SEED_ENDPOINTS


async def test_revoked_after_normal_exit(kb: Keybrake) -> None:
    async with stripe_key(kb) as vk:
        pass
    assert (await kb.get_key(vk.id)).status == "revoked"
    with pytest.raises(VaultKeyRevoked):
        await vk.stripe.payment_intents.create(amount=100, currency="usd")


async def test_revoked_when_the_block_raises(kb: Keybrake) -> None:
    seen: list[VaultKey] = []
    with pytest.raises(ZeroDivisionError):
        async with stripe_key(kb) as vk:
            seen.append(vk)
            _ = 1 / 0
    assert (await kb.get_key(seen[0].id)).status == "revoked"


async def test_revoked_when_the_task_is_cancelled(kb: Keybrake) -> None:
    entered = asyncio.Event()
    seen: list[VaultKey] = []

    async def run() -> None:
        async with stripe_key(kb) as vk:
            seen.append(vk)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(run())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await kb.get_key(seen[0].id)).status == "revoked"


async def test_revoked_when_cancelled_twice_during_cleanup(kb: Keybrake) -> None:
    entered = asyncio.Event()
    seen: list[VaultKey] = []

    async def run() -> None:
        async with stripe_key(kb) as vk:
            seen.append(vk)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(run())
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)  # now inside the cleanup
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await kb.get_key(seen[0].id)).status == "revoked"


async def test_keepalive_keeps_a_short_key_usable(kb: Keybrake) -> None:
    async with stripe_key(kb, ttl=2) as vk:
        first_expiry = vk.expires_at
        await asyncio.sleep(3.2)
        await vk.stripe.payment_intents.create(amount=100, currency="usd")
        assert vk.expires_at > first_expiry


async def test_token_is_never_in_repr(kb: Keybrake) -> None:
    async with stripe_key(kb) as vk:
        for text in (repr(vk), repr(vk.info), repr(kb), str(vk.info.raw)):
            assert vk.token not in text
        assert vk.id in repr(vk)


async def test_revoke_failure_is_logged_without_the_token(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with server.client() as kb:
        vk = stripe_key(kb)
        await vk.__aenter__()
        token = vk.token
        await kb.close()  # the cleanup can no longer reach the server
        with caplog.at_level(logging.WARNING, logger="keybrake"):
            await vk.__aexit__(None, None, None)
    assert "could not revoke" in caplog.text
    assert token not in caplog.text


async def test_issuing_without_a_token_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch, server: RunningServer
) -> None:
    monkeypatch.delenv("KEYBRAKE_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="KEYBRAKE_TOKEN"):
        async with VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl=60, api_url=server.url):
            pass


async def test_environment_configures_a_standalone_key(
    monkeypatch: pytest.MonkeyPatch, server: RunningServer
) -> None:
    monkeypatch.setenv("KEYBRAKE_TOKEN", server.admin_token)
    monkeypatch.setenv("KEYBRAKE_URL", server.url)
    async with VaultKey("stripe", SEED_ENDPOINTS, cap=100, ttl="1m") as vk:
        pi = await vk.stripe.payment_intents.create(amount=500, currency="eur")
        assert pi.currency == "eur"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cap": 0.5}, "cap"),
        ({"cap": "-1"}, "cap"),
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": 0}, "ttl"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"cap": 10, "ttl": "1m", **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        VaultKey("stripe", SEED_ENDPOINTS, **args)  # type: ignore[arg-type]


async def test_a_key_is_entered_only_once(kb: Keybrake) -> None:
    vk = stripe_key(kb)
    async with vk:
        pass
    await vk.aclose()  # closing twice is a no-op
    with pytest.raises(ConfigurationError, match="only once"):
        async with vk:
            pass


async def test_unexited_key_warns_when_collected(kb: Keybrake) -> None:
    vk = stripe_key(kb, keepalive=False)
    await vk.__aenter__()
    key_id = vk.id
    with pytest.warns(ResourceWarning, match="without exit"):
        del vk
        gc.collect()
    await kb.revoke_key(key_id)


async def test_issuance_refusal_is_a_keybrake_error(kb: Keybrake) -> None:
    vk = VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="31d", client=kb)  # the server's limit
    with pytest.raises(KeybrakeError) as caught:
        async with vk:
            pass
    assert caught.value.status == 400
    assert caught.value.code == "bad_request"


async def test_error_classes_follow_where_the_refusal_came_from(
    server: RunningServer, kb: Keybrake
) -> None:
    async with Keybrake("kb_admin_wrong", api_url=server.url, proxy_url=server.url) as bad:
        with pytest.raises(IssuanceError) as caught:
            await bad.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl=60)
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    async with stripe_key(kb) as vk:
        with pytest.raises(ProxyRefused) as refused:
            await vk.stripe.request("POST", "/v1/payment_intents", {"amount": "x"})
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    with pytest.raises(VaultKeyRevoked) as revoked:
        await kb.refresh_key(vk.id, expires_in=60)
    assert revoked.value.status == 409
