"""The seed flow over raw HTTP: issue, call the proxy, revoke, be refused."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import SEED_ENDPOINTS, RunningServer

SEED_BODY = {
    "label": "seed",
    "vendor": "stripe",
    "allowed_endpoints": SEED_ENDPOINTS,
    "daily_usd_cap": 500,
    "expires_in": "5m",
}


async def issue(
    http: aiohttp.ClientSession, server: RunningServer, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with http.post(
        f"{server.url}/v1/keys",
        json=body or SEED_BODY,
        headers={"Authorization": f"Bearer {server.admin_token}"},
    ) as response:
        assert response.status == 201, await response.text()
        data: dict[str, Any] = await response.json()
        return data


async def create_intent(
    http: aiohttp.ClientSession, server: RunningServer, token: str, amount: int = 2000
) -> aiohttp.ClientResponse:
    async with http.post(
        f"{server.url}/stripe/v1/payment_intents",
        data={"amount": str(amount), "currency": "usd"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        await response.read()
        return response


async def test_seed_flow(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        key = await issue(http, server)
        assert key["id"].startswith("vk_")
        assert key["token"].startswith("vault_key_")
        assert key["vendor"] == "stripe"
        assert key["daily_usd_cap"] == "500.00"
        assert key["status"] == "active"
        assert key["allowed_endpoints"] == SEED_ENDPOINTS
        for field in ("expires_at", "max_expires_at", "created_at"):
            assert key[field].endswith("Z")

        async with http.post(
            f"{server.url}/stripe/v1/payment_intents",
            data={"amount": "2000", "currency": "usd"},
            headers={"Authorization": f"Bearer {key['token']}"},
        ) as response:
            assert response.status == 200
            intent = await response.json()
        assert intent["object"] == "payment_intent"
        assert intent["amount"] == 2000

        admin = {"Authorization": f"Bearer {server.admin_token}"}
        async with http.get(f"{server.url}/v1/keys/{key['id']}", headers=admin) as response:
            described = await response.json()
        assert "token" not in described
        assert described["spent_today_usd"] == "20.00"

        async with http.delete(f"{server.url}/v1/keys/{key['id']}", headers=admin) as response:
            assert response.status == 200
            revoked = await response.json()
        assert revoked["status"] == "revoked"
        assert revoked["revoked_at"].endswith("Z")

        response = await create_intent(http, server, key["token"])
        assert response.status == 401
        async with http.post(
            f"{server.url}/stripe/v1/payment_intents",
            data={"amount": "2000", "currency": "usd"},
            headers={"Authorization": f"Bearer {key['token']}"},
        ) as response:
            body = await response.json()
            assert response.status == 401
            assert response.headers["Stripe-Should-Retry"] == "false"
        assert body["code"] == "key_revoked"
        assert body["message"]
        assert body["error"] == {
            "type": "invalid_request_error",
            "code": "key_revoked",
            "message": body["message"],
        }


async def test_key_expiring_after_one_second_is_refused(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        key = await issue(http, server, {**SEED_BODY, "expires_in": "1s"})
        assert (await create_intent(http, server, key["token"], 100)).status == 200
        await asyncio.sleep(1.2)
        async with http.post(
            f"{server.url}/stripe/v1/payment_intents",
            data={"amount": "100", "currency": "usd"},
            headers={"Authorization": f"Bearer {key['token']}"},
        ) as response:
            assert response.status == 401
            assert (await response.json())["code"] == "key_expired"


async def test_token_never_reaches_the_database_file(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        key = await issue(http, server)
        assert (await create_intent(http, server, key["token"])).status == 200
    token = key["token"].encode()
    files = [p for p in server.db_path.parent.iterdir() if p.name.startswith("keybrake.db")]
    assert files, "the SQLite file should exist"
    for path in files:
        assert token not in path.read_bytes(), path.name
        assert server.admin_token.encode() not in path.read_bytes(), path.name


async def test_refusals_have_the_contract_shape(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        key = await issue(http, server, {**SEED_BODY, "daily_usd_cap": "30"})
        auth = {"Authorization": f"Bearer {key['token']}"}

        async with http.post(
            f"{server.url}/stripe/v1/refunds", data={"charge": "ch_1"}, headers=auth
        ) as response:
            assert response.status == 403
            body = await response.json()
        assert body["code"] == "endpoint_not_allowed"
        assert body["attempted"] == "POST /v1/refunds"
        assert body["allowed_endpoints"] == SEED_ENDPOINTS
        assert body["error"]["code"] == "endpoint_not_allowed"

        assert (await create_intent(http, server, key["token"], 2000)).status == 200
        async with http.post(
            f"{server.url}/stripe/v1/payment_intents",
            data={"amount": "1001", "currency": "usd"},
            headers=auth,
        ) as response:
            assert response.status == 429
            assert response.headers["Stripe-Should-Retry"] == "false"
            body = await response.json()
        assert body["code"] == "cap_exhausted"
        assert body["daily_usd_cap"] == "30.00"
        assert body["spent_today_usd"] == "20.00"
        assert body["attempted_usd"] == "10.01"

        async with http.get(
            f"{server.url}/stripe/v1/payment_intents",
            headers={"Authorization": "Bearer vault_key_nope"},
        ) as response:
            assert response.status == 401
            assert (await response.json())["code"] == "invalid_key"
