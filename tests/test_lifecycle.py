"""VaultKey's promises under faults, cancellation, key loss and load."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import pytest

from keybrake import (
    ConfigurationError,
    Keybrake,
    KeybrakeError,
    KeybrakeUnavailable,
    RetryPolicy,
    VaultKey,
    VaultKeyExpired,
    VaultKeyRevoked,
)
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.faults import fault_proxy

FAST = RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.05, max_retry_after=1.0)


async def keys_of(server: RunningServer, status: str | None = None) -> list[str]:
    async with server.client() as kb:
        return [key.id async for key in kb.list_keys(status=status)]


# -- faults between the SDK and the server ------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        ["drop", "reset"],
        ["lost"],  # the server made the key, the answer never came back
        ["lost", "drop", "lost"],
        ["status:503", "status:502"],
        ["status:429:retry_after=0.2"],
        ["delay:0.3"],
    ],
)
async def test_issuance_survives_faults_with_exactly_one_key(
    server: RunningServer, faults: list[str]
) -> None:
    async with fault_proxy(server.url) as proxy:
        proxy.faults = list(faults)
        async with (
            Keybrake(server.admin_token, api_url=proxy.url, proxy_url=server.url, retry=FAST) as kb,
            VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk,
        ):
            assert vk.id
        issues = [line for line, _ in proxy.seen if line.startswith("POST /v1/keys ")]
        assert len(issues) == len(faults) + 1 - faults.count("delay:0.3")
    assert await keys_of(server) == [vk.id]
    assert await keys_of(server, "active") == []


async def test_retry_after_is_honoured(server: RunningServer) -> None:
    async with fault_proxy(server.url) as proxy:
        proxy.faults = ["status:429:retry_after=0.5"]
        async with Keybrake(
            server.admin_token, api_url=proxy.url, proxy_url=server.url, retry=FAST
        ) as kb:
            started = time.monotonic()
            await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl=60)
            waited = time.monotonic() - started
    assert waited >= 0.5  # behaviour, not speed: it did wait as it was told


async def test_other_4xx_are_not_retried(server: RunningServer) -> None:
    async with fault_proxy(server.url) as proxy:
        proxy.faults = ["status:400", "pass"]
        async with Keybrake(
            server.admin_token, api_url=proxy.url, proxy_url=server.url, retry=FAST
        ) as kb:
            with pytest.raises(KeybrakeError) as caught:
                await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl=60)
    assert caught.value.status == 400
    assert len(proxy.seen) == 1


async def test_exhausted_retries_raise_unavailable_with_the_cause(server: RunningServer) -> None:
    async with fault_proxy(server.url) as proxy:
        proxy.faults = ["status:429"] * 3
        policy = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02)
        async with Keybrake(
            server.admin_token, api_url=proxy.url, proxy_url=server.url, retry=policy
        ) as kb:
            with pytest.raises(KeybrakeUnavailable) as caught:
                await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl=60)
    assert isinstance(caught.value.__cause__, KeybrakeError)
    assert caught.value.__cause__.status == 429


async def test_revocation_is_retried_and_lands(server: RunningServer) -> None:
    async with fault_proxy(server.url) as proxy:
        async with (
            Keybrake(server.admin_token, api_url=proxy.url, proxy_url=server.url, retry=FAST) as kb,
            VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk,
        ):
            proxy.faults = ["reset", "status:503", "lost"]
        deletes = [line for line, _ in proxy.seen if line.startswith("DELETE ")]
        assert len(deletes) == 4
    async with server.client() as admin:
        assert (await admin.get_key(vk.id)).status == "revoked"


async def test_with_the_server_gone_the_bodys_exception_still_wins(
    server: RunningServer,
) -> None:
    async with fault_proxy(server.url) as proxy:
        policy = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02)
        async with Keybrake(
            server.admin_token, api_url=proxy.url, proxy_url=server.url, retry=policy
        ) as kb:
            with pytest.raises(ZeroDivisionError):
                async with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb):
                    proxy.faults = ["reset"] * 10  # the server can't be reached any more
                    _ = 1 / 0


# -- cancellation ---------------------------------------------------------------------------


async def run_block(kb: Keybrake, seen: list[str], entered: asyncio.Event) -> None:
    async with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk:
        seen.append(vk.id)
        entered.set()
        await asyncio.sleep(60)


async def assert_revoked(kb: Keybrake, key_ids: list[str]) -> None:
    assert key_ids
    for key_id in key_ids:
        assert (await kb.get_key(key_id)).status == "revoked"


async def test_cancelled_by_wait_for(kb: Keybrake) -> None:
    seen: list[str] = []
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run_block(kb, seen, asyncio.Event()), 0.3)
    await assert_revoked(kb, seen)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
async def test_cancelled_by_asyncio_timeout(kb: Keybrake) -> None:
    seen: list[str] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # type: ignore[attr-defined,unused-ignore]
            await run_block(kb, seen, asyncio.Event())
    await assert_revoked(kb, seen)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup is new in 3.11")
async def test_cancelled_inside_a_task_group(kb: Keybrake) -> None:
    seen: list[str] = []
    entered = asyncio.Event()

    async def fail_soon() -> None:
        await entered.wait()
        raise LookupError("a sibling failed")

    with pytest.raises(BaseException) as caught:  # noqa: PT011 - an ExceptionGroup
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
            group.create_task(run_block(kb, seen, entered))
            group.create_task(run_block(kb, seen, asyncio.Event()))
            group.create_task(fail_soon())
    assert "LookupError" in repr(caught.value)
    await assert_revoked(kb, seen)


async def test_keyboard_interrupt_still_revokes(kb: Keybrake) -> None:
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        async with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl="1m", client=kb) as vk:
            seen.append(vk.id)
            raise KeyboardInterrupt
    await assert_revoked(kb, seen)


async def test_cancellation_during_issuance_leaves_no_key_open(
    server: RunningServer,
) -> None:
    async with fault_proxy(server.url) as proxy:
        proxy.faults = ["delay:0.5"]
        async with Keybrake(
            server.admin_token, api_url=proxy.url, proxy_url=server.url, retry=FAST
        ) as kb:
            task = asyncio.create_task(run_block(kb, [], asyncio.Event()))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    # The server made the key after the block was cancelled: it was revoked all the same.
    assert len(await keys_of(server)) == 1
    assert await keys_of(server, "active") == []


# -- keepalive --------------------------------------------------------------------------------


async def test_a_2s_key_stays_usable_through_a_6s_block(kb: Keybrake) -> None:
    async with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl=2, client=kb) as vk:
        for _ in range(6):
            await asyncio.sleep(1)
            await vk.stripe.payment_intents.create(amount=50, currency="usd")
        assert vk.lost is None


async def test_a_revoked_key_is_detected(kb: Keybrake) -> None:
    lost: list[KeybrakeError] = []
    async with VaultKey(
        "stripe", SEED_ENDPOINTS, cap=5, ttl=1, client=kb, on_lost=lost.append
    ) as vk:
        await kb.revoke_key(vk.id)
        await asyncio.sleep(1.2)  # the next keepalive refresh finds out
        assert len(lost) == 1
        assert isinstance(lost[0], VaultKeyRevoked)
        with pytest.raises(VaultKeyRevoked):  # refused here, before reaching the proxy
            await vk.stripe.payment_intents.create(amount=50, currency="usd")


async def test_cancel_on_loss_cancels_the_block(kb: Keybrake) -> None:
    seen: list[str] = []

    async def block() -> None:
        async with VaultKey(
            "stripe", SEED_ENDPOINTS, cap=5, ttl=1, client=kb, cancel_on_loss=True
        ) as vk:
            seen.append(vk.id)
            await kb.revoke_key(vk.id)
            await asyncio.sleep(30)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(block(), 10)
    await assert_revoked(kb, seen)


async def test_max_lifetime_is_respected(kb: Keybrake) -> None:
    async with VaultKey("stripe", SEED_ENDPOINTS, cap=5, ttl=1, max_lifetime=2, client=kb) as vk:
        max_expires_at = vk.info.max_expires_at
        await asyncio.sleep(2.3)
        assert vk.expires_at <= max_expires_at
        with pytest.raises(VaultKeyExpired):
            await vk.stripe.payment_intents.create(amount=50, currency="usd")


# -- soak ---------------------------------------------------------------------------------------


async def test_soak_1000_blocks_leave_no_key_active(server: RunningServer) -> None:
    rng = random.Random(7)
    outcomes = {"ok": 0, "raised": 0, "cancelled": 0}

    async def one(kb: Keybrake, fate: str) -> None:
        async with VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="5m", client=kb):
            await asyncio.sleep(rng.random() / 100)
            if fate == "raise":
                raise ValueError("the agent's tool failed")
            if fate == "cancel":
                await asyncio.sleep(10)

    async def run(kb: Keybrake, fate: str) -> None:
        task = asyncio.create_task(one(kb, fate))
        if fate == "cancel":
            await asyncio.sleep(rng.random() / 50)
            task.cancel()
        try:
            await task
            outcomes["ok"] += 1
        except ValueError:
            outcomes["raised"] += 1
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1

    fates = rng.choices(["ok", "raise", "cancel"], weights=[6, 2, 2], k=1000)
    gate = asyncio.Semaphore(50)

    async def gated(kb: Keybrake, fate: str) -> None:
        async with gate:
            await run(kb, fate)

    async with server.client(retry=FAST) as kb:
        await asyncio.gather(*(gated(kb, fate) for fate in fates))
    assert sum(outcomes.values()) == 1000
    assert min(outcomes.values()) > 100
    assert await keys_of(server, "active") == []
    assert len(await keys_of(server)) == 1000


async def test_cancelled_right_after_issuance_still_revokes(server: RunningServer) -> None:
    """The cancellation lands after the key was made but before the block resumed."""

    class CancelOnIssue(Keybrake):
        async def issue_key(self, *args: Any, **kwargs: Any) -> Any:
            issued = await super().issue_key(*args, **kwargs)
            task = asyncio.current_task()
            assert task is not None
            owner.cancel()
            return issued

    async with CancelOnIssue(
        server.admin_token, api_url=server.url, proxy_url=server.url, retry=FAST
    ) as kb:
        owner = asyncio.create_task(run_block(kb, [], asyncio.Event()))
        with pytest.raises(asyncio.CancelledError):
            await owner
    assert len(await keys_of(server)) == 1
    assert await keys_of(server, "active") == []


async def test_official_clients_need_an_open_key(kb: Keybrake) -> None:
    async with VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="1m", client=kb) as vk:
        pass
    with pytest.raises(ConfigurationError, match="open vault key"):
        vk.stripe_client()
