"""Brakes through the real server: a recording upstream counts what was forwarded."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import stripe

from keybrake import (
    Budget,
    BudgetExhausted,
    IssuanceError,
    Keybrake,
    RateLimited,
    RetryPolicy,
    SpendCapExceeded,
    UsesExhausted,
    VaultKey,
)
from keybrake.server import running_server
from tests.conftest import make_config
from tests.recorder import Proxy, Recorder

FREE = "/stripe/v1/customers/cus_1"


async def call(
    http: aiohttp.ClientSession, url: str, token: str, method: str = "GET", path: str = FREE
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.request(
        method, url + path, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body, dict(response.headers)


async def audit_decisions(proxy: Proxy, key_id: str, decision: str, expected: int) -> int:
    """How many audit entries of ``key_id`` have ``decision``, once ``expected`` are written
    (entries are written shortly after the answers)."""
    async with proxy.client() as kb:
        for _ in range(50):
            entries = [e async for e in kb.audit(key_id=key_id, decision=decision)]
            if len(entries) >= expected:
                break
            await asyncio.sleep(0.05)
    return len(entries)


async def metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        return await response.text()


async def test_max_requests_holds_exactly_under_concurrency(
    proxy: Proxy, recorder: Recorder
) -> None:
    """30 requests at once on a key with ``max_requests=7``: exactly 7 reach the vendor."""
    recorder.delay = 0.05  # so that they overlap
    issued = await proxy.issue(max_requests=7)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(call(http, proxy.url, issued["token"]) for _ in range(30)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 7 + [429] * 23
    assert {body["code"] for status, body, _ in results if status == 429} == {"uses_exhausted"}
    assert len(recorder.requests) == 7
    view = await proxy.key(issued["id"])
    assert (view["max_requests"], view["requests_used"], view["rate_limit"]) == (7, 7, None)
    assert await audit_decisions(proxy, issued["id"], "uses_exhausted", 23) == 23
    assert 'vendor="stripe",decision="uses_exhausted"} 23' in await metrics(proxy.url)


async def test_a_rate_limit_on_the_real_clock(proxy: Proxy, recorder: Recorder) -> None:
    """``3/s``: 10 at once forward 3; the others are told to come back in 1 s (and, refused
    for the rate, count no use); after that second, 3 more go."""
    issued = await proxy.issue(rate_limit="3/s", max_requests=100)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        first = await asyncio.gather(*(call(http, proxy.url, issued["token"]) for _ in range(10)))
        refused = [(body, headers) for status, body, headers in first if status == 429]
        assert len(refused) == 7
        assert len(recorder.requests) == 3
        for body, headers in refused:
            assert body["code"] == "rate_limited"
            assert body["error"]["code"] == "rate_limited"  # Stripe's shape too
            assert headers["Retry-After"] == "1"
            assert headers["Stripe-Should-Retry"] == "false"
        await asyncio.sleep(max(0.0, started + 1.05 - time.monotonic()))
        second = await asyncio.gather(*(call(http, proxy.url, issued["token"]) for _ in range(5)))
    assert sorted(status for status, _, _ in second) == [200] * 3 + [429] * 2
    assert len(recorder.requests) == 6
    view = await proxy.key(issued["id"])
    assert (view["rate_limit"], view["requests_used"]) == ("3/s", 6)
    assert await audit_decisions(proxy, issued["id"], "rate_limited", 9) == 9
    assert 'vendor="stripe",decision="rate_limited"} 9' in await metrics(proxy.url)


async def test_keys_without_brakes_write_nothing_for_a_free_request(
    proxy: Proxy, recorder: Recorder
) -> None:
    issued = await proxy.issue()
    async with aiohttp.ClientSession() as http:
        assert (await call(http, proxy.url, issued["token"]))[0] == 200
    view = await proxy.key(issued["id"])
    assert (view["requests_used"], view["max_requests"]) == (0, None)


async def test_the_sdk_raises_final_brake_errors(proxy: Proxy, recorder: Recorder) -> None:
    async with proxy.client() as kb:
        async with VaultKey(
            "stripe", ["/v1/**"], cap=10, ttl="1m", client=kb, rate_limit="1/m", max_requests=2
        ) as vk:
            await vk.stripe.customers.retrieve("cus_1")
            with pytest.raises(RateLimited) as limited:
                await vk.stripe.customers.retrieve("cus_1")
            assert limited.value.retry_after is not None
            assert limited.value.retry_after == 60  # whole seconds, rounded up
            assert limited.value.rate_limit == "1/m"
            assert len(recorder.requests) == 1  # the SDK did not retry it
            info = await kb.get_key(vk.id)
            assert (info.rate_limit, info.max_requests, info.requests_used) == ("1/m", 2, 1)
        async with VaultKey(
            "stripe", ["/v1/**"], cap=10, ttl="1m", client=kb, max_requests=1
        ) as vk:
            await vk.stripe.customers.retrieve("cus_1")
            with pytest.raises(UsesExhausted) as exhausted:
                await vk.stripe.customers.retrieve("cus_1")
            assert exhausted.value.max_requests == 1
    assert len(recorder.requests) == 2


async def test_waiting_out_a_rate_limit_once_is_opt_in(proxy: Proxy, recorder: Recorder) -> None:
    retry = RetryPolicy(attempts=1, wait_rate_limited=True, max_retry_after=2)
    async with (
        Keybrake(proxy.admin_token, api_url=proxy.url, proxy_url=proxy.url, retry=retry) as kb,
        VaultKey("stripe", ["/v1/**"], cap=10, ttl="1m", client=kb, rate_limit="1/s") as vk,
    ):
        await vk.stripe.customers.retrieve("cus_1")
        started = time.monotonic()
        await vk.stripe.customers.retrieve("cus_1")  # waited about a second, then went
        assert time.monotonic() - started >= 0.5
    assert len(recorder.requests) == 2


async def test_the_official_stripe_sdk_does_not_retry_a_rate_limit(
    proxy: Proxy, recorder: Recorder
) -> None:
    issued = await proxy.issue(rate_limit="1/m")
    client = stripe.StripeClient(
        issued["token"], base_addresses={"api": f"{proxy.url}/stripe"}, max_network_retries=3
    )
    await asyncio.to_thread(lambda: client.v1.customers.retrieve("cus_1"))
    with pytest.raises(stripe.RateLimitError) as raised:
        await asyncio.to_thread(lambda: client.v1.customers.retrieve("cus_1"))
    assert raised.value.http_status == 429
    assert isinstance(raised.value.json_body, dict)
    assert raised.value.json_body["code"] == "rate_limited"
    # One refusal, not four: Stripe-Should-Retry: false stops the SDK's own retries.
    assert await audit_decisions(proxy, issued["id"], "rate_limited", 1) == 1
    await asyncio.sleep(0.3)
    assert await audit_decisions(proxy, issued["id"], "rate_limited", 1) == 1
    assert len(recorder.requests) == 1


# -- run budgets ---------------------------------------------------------------------------


@attrs.frozen
class TwoVendors:
    """A server with Stripe and Resend both on the recorder; Resend priced 0.01 USD a
    recipient, so that both vendors' requests below cost the same."""

    url: str
    admin_token: str

    def client(self) -> Keybrake:
        retry = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
        return Keybrake(self.admin_token, api_url=self.url, proxy_url=self.url, retry=retry)


PRICING = {"resend": {"usd_per_email": "0.01"}}


@pytest.fixture
async def two_vendors(tmp_path: Path, recorder: Recorder) -> AsyncIterator[TwoVendors]:
    pricing = tmp_path / "pricing.json"
    pricing.write_text(json.dumps(PRICING))
    config = make_config(
        tmp_path / "kb.db",
        recorder.url,
        vendors={"resend": {"api_base": recorder.url, "api_key": "re_upstream"}},
        pricing_file=str(pricing),
    )
    async with running_server(config) as url:
        assert config.admin_token is not None
        yield TwoVendors(url, config.admin_token)


async def spend_one_cent(http: aiohttp.ClientSession, url: str, vendor: str, token: str) -> int:
    """A request that costs 0.01 USD on either vendor; its status."""
    headers = {"Authorization": f"Bearer {token}"}
    if vendor == "stripe":
        request = http.post(
            f"{url}/stripe/v1/payment_intents",
            data={"amount": "1", "currency": "usd"},
            headers=headers,
        )
    else:
        email = {"from": "a@acme.test", "to": ["b@example.com"], "subject": "s", "text": "t"}
        request = http.post(f"{url}/resend/emails", json=email, headers=headers)
    async with request as response:
        body = await response.json(content_type=None)
        if response.status == 429:
            assert body["code"] == "budget_exhausted", body
        return response.status


async def race_in_one_budget(url: str, kb: Keybrake, *urls: str) -> tuple[str, list[int]]:
    """40 requests at once, half on a Stripe key and half on a Resend key of one 0.10 USD
    budget (each key's own cap is 1 USD), spread over ``urls`` (replicas)."""
    info = await kb.create_budget(cap="0.10", ttl="5m", label="race")
    stripe_key = await kb.issue_key(
        "stripe", ["/v1/payment_intents"], cap=1, ttl="5m", budget=info.id
    )
    resend_key = await kb.issue_key("resend", ["POST /emails"], cap=1, ttl="5m", budget=info.id)
    targets = urls or (url,)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as http:
        statuses = await asyncio.gather(
            *(
                spend_one_cent(
                    http,
                    targets[i % len(targets)],
                    "stripe" if i % 2 else "resend",
                    (stripe_key if i % 2 else resend_key).token,
                )
                for i in range(40)
            )
        )
    return info.id, statuses


async def test_40_requests_over_two_vendors_stop_at_exactly_the_budget(
    two_vendors: TwoVendors, recorder: Recorder
) -> None:
    async with two_vendors.client() as kb:
        budget_id, statuses = await race_in_one_budget(two_vendors.url, kb)
        assert sorted(statuses) == [200] * 10 + [429] * 30
        assert len(recorder.requests) == 10
        vendors = {path.split("/")[1] for _, path, _, _ in recorder.requests}
        assert vendors <= {"v1", "emails"}
        info = await kb.get_budget(budget_id)
        assert info.spent_today_usd + (info.reserved_today_usd or 0) == info.daily_usd_cap
        usage = [row async for row in kb.usage()]
        assert {row.budget for row in usage} == {budget_id}
        assert sum(row.spent_usd + row.reserved_usd for row in usage) == info.daily_usd_cap
        refused = [e async for e in kb.audit(decision="budget_exhausted")]
        assert len(refused) <= 30  # written shortly after; all of them, given time


async def test_revoking_a_budget_revokes_its_keys(proxy: Proxy, recorder: Recorder) -> None:
    async with proxy.client() as kb:
        info = await kb.create_budget(cap=5, ttl="10m", label="run-42")
        assert (info.status, info.label, str(info.daily_usd_cap)) == ("active", "run-42", "5.00")
        issued = await kb.issue_key("stripe", ["/v1/**"], cap=1, ttl="1h", budget=info.id)
        # A key lives no longer than its budget.
        assert issued.expires_at <= info.expires_at
        assert issued.budget == info.id
        async with aiohttp.ClientSession() as http:
            assert (await call(http, proxy.url, issued.token))[0] == 200
            await kb.revoke_budget(info.id)
            status, body, _ = await call(http, proxy.url, issued.token)
        assert (status, body["code"]) == (401, "key_revoked")
        assert (await kb.get_key(issued.id)).status == "revoked"
        assert (await kb.get_budget(info.id)).status == "revoked"
        with pytest.raises(IssuanceError) as inactive:
            await kb.issue_key("stripe", ["/v1/**"], cap=1, ttl="1m", budget=info.id)
        assert (inactive.value.status, inactive.value.code) == (400, "budget_inactive")
        with pytest.raises(IssuanceError) as unknown:
            await kb.issue_key("stripe", ["/v1/**"], cap=1, ttl="1m", budget="bud_nope")
        assert (unknown.value.status, unknown.value.code) == (404, "budget_not_found")
    assert len(recorder.requests) == 1


async def test_the_sdk_raises_budget_exhausted(proxy: Proxy, recorder: Recorder) -> None:
    recorder.answer = {"id": "pi_1", "object": "payment_intent", "amount": 2, "currency": "usd"}
    async with (
        proxy.client() as kb,
        Budget(cap="0.02", ttl="5m", client=kb) as run,
        VaultKey("stripe", ["/v1/**"], cap=1, ttl="1m", client=kb, budget=run) as vk,
    ):
        await vk.stripe.payment_intents.create(amount=2, currency="usd")
        with pytest.raises(BudgetExhausted) as exhausted:
            await vk.stripe.payment_intents.create(amount=1, currency="usd")
    assert isinstance(exhausted.value, SpendCapExceeded)
    assert exhausted.value.budget == run.id
    assert str(exhausted.value.budget_daily_usd_cap) == "0.02"
    assert len(recorder.requests) == 1
    # The audit log names the budget each request drew from.
    async with proxy.client() as kb:
        for _ in range(100):
            entries = [entry async for entry in kb.audit(key_id=vk.id)]
            if len(entries) == 2:
                break
            await asyncio.sleep(0.02)
    assert sorted(e.decision for e in entries) == ["allowed", "budget_exhausted"]
    assert {e.budget for e in entries} == {run.id}


class Boom(Exception):
    pass


async def test_a_budget_is_revoked_with_its_keys_when_the_block_fails(proxy: Proxy) -> None:
    async with proxy.client() as kb:
        with pytest.raises(Boom):
            async with Budget(cap=1, ttl="5m", client=kb) as run:
                async with VaultKey("stripe", ["/v1/**"], cap=1, ttl="1m", client=kb) as other:
                    pass
                key = await kb.issue_key("stripe", ["/v1/**"], cap=1, ttl="1m", budget=run)
                raise Boom
        assert (await kb.get_budget(run.id)).status == "revoked"
        assert (await kb.get_key(key.id)).status == "revoked"
        assert (await kb.get_key(other.id)).status == "revoked"  # its own block ended it


async def test_a_budget_is_revoked_when_its_task_is_cancelled(proxy: Proxy) -> None:
    async with proxy.client() as kb:
        opened = asyncio.Event()
        ids: list[str] = []

        async def run() -> None:
            async with Budget(cap=1, ttl="5m", client=kb) as budget:
                key = await kb.issue_key("stripe", ["/v1/**"], cap=1, ttl="1m", budget=budget)
                ids.extend([budget.id, key.id])
                opened.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(run())
        await opened.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        budget_id, key_id = ids
        assert (await kb.get_budget(budget_id)).status == "revoked"
        assert (await kb.get_key(key_id)).status == "revoked"
