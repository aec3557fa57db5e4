"""FastAPI: a vault key per request through a dependency, served by a real uvicorn."""

# No 'from __future__ import annotations' here: FastAPI resolves the routes' annotations,
# and some routes are defined inside tests.

import asyncio
import json
import runpy
from collections.abc import AsyncIterator
from typing import Annotated, Any

import aiohttp
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import StreamingResponse

from keybrake import Keybrake, KeySpec, VaultKey
from keybrake.integrations.fastapi import (
    VaultKeyUnavailable,
    vault_key_dependency,
    vault_key_unavailable_handler,
)
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.integrations.asgi import serving
from tests.integrations.conftest import EXAMPLES, keys_issued, wait_until_revoked


def payments_app(kb: Keybrake, **options: Any) -> FastAPI:
    payments_key = vault_key_dependency(
        "stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb, **options
    )
    PaymentsKey = Annotated[VaultKey, Depends(payments_key)]
    app = FastAPI()
    app.add_exception_handler(VaultKeyUnavailable, vault_key_unavailable_handler)

    @app.post("/pay")
    async def pay(vk: PaymentsKey) -> dict[str, str]:
        pi = await vk.stripe.payment_intents.create(amount=2000, currency="usd")
        return {"id": pi.id, "key": vk.id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def fetch(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as response:
        return response.status, await response.json()


def test_the_key_is_not_a_request_parameter(kb: Keybrake) -> None:
    operation = payments_app(kb).openapi()["paths"]["/pay"]["post"]
    assert "parameters" not in operation
    assert "requestBody" not in operation


async def test_a_request_gets_a_labelled_key_revoked_after_the_response(kb: Keybrake) -> None:
    async with serving(payments_app(kb)) as url:
        headers = {"X-User-Id": "alice", "X-Agent-Run-Id": "run-42"}
        status, body = await fetch("POST", f"{url}/pay", headers=headers)
    assert status == 200
    assert body["id"].startswith("pi_")
    info = await wait_until_revoked(kb, body["key"])
    assert info.label == "POST /pay x-user-id=alice x-agent-run-id=run-42"
    assert info.metadata == {"x-user-id": "alice", "x-agent-run-id": "run-42"}
    assert info.spent_today_usd == 20


async def test_label_options(kb: Keybrake) -> None:
    app = payments_app(kb, label="checkout", label_headers=["X-Tenant"], metadata={"team": "b"})
    tenant = "acme\t" + "x" * 100  # cut to 64 printable characters
    async with serving(app) as url:
        _, body = await fetch("POST", f"{url}/pay", headers={"X-Tenant": tenant, "X-User-Id": "x"})
    info = await wait_until_revoked(kb, body["key"])
    assert info.label == "checkout x-tenant=acme" + "x" * 60
    assert info.metadata == {"x-tenant": "acme" + "x" * 60, "team": "b"}


async def test_a_streaming_response_keeps_its_key_until_the_end(kb: Keybrake) -> None:
    payments_key = vault_key_dependency("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    go_on = asyncio.Event()
    app = FastAPI()

    @app.get("/stream")
    async def stream(vk: Annotated[VaultKey, Depends(payments_key)]) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            yield f"{vk.id}\n"
            await go_on.wait()  # the client has the first line: the response is under way
            pi = await vk.stripe.payment_intents.create(amount=500, currency="usd")
            yield f"{pi.id}\n"

        return StreamingResponse(lines(), media_type="text/plain")

    async with serving(app) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/stream") as response:
            key_id = (await response.content.readline()).decode().strip()
            assert (await kb.get_key(key_id)).status == "active"
            go_on.set()
            rest = (await response.content.read()).decode()
        assert rest.startswith("pi_")
        await wait_until_revoked(kb, key_id)


async def test_a_router_scope_is_one_key_per_request(kb: Keybrake) -> None:
    payments_key = vault_key_dependency("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    router = APIRouter(prefix="/payments", dependencies=[Depends(payments_key)])

    @router.post("/pay")
    async def pay(vk: Annotated[VaultKey, Depends(payments_key)]) -> dict[str, str]:
        pi = await vk.stripe.payment_intents.create(amount=700, currency="usd")
        return {"id": pi.id, "key": vk.id}

    @router.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ping": "pong"}

    app = FastAPI()
    app.include_router(router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async with serving(app) as url:
        assert await fetch("GET", f"{url}/health") == (200, {"status": "ok"})
        assert await keys_issued(kb) == []  # outside the router: no key
        status, body = await fetch("POST", f"{url}/payments/pay")
        assert status == 200
        [key] = await keys_issued(kb)  # the router's and the route's Depends: one key
        assert key.id == body["key"]
        assert key.label == "POST /payments/pay"
        assert await fetch("GET", f"{url}/payments/ping") == (200, {"ping": "pong"})
        keys = await keys_issued(kb)
        assert len(keys) == 2
        for key in keys:
            await wait_until_revoked(kb, key.id)


async def test_issuance_down_answers_503(dead_kb: Keybrake) -> None:
    async with serving(payments_app(dead_kb)) as url:
        status, body = await fetch("POST", f"{url}/pay")
        assert status == 503
        assert body == {
            "code": "vault_key_unavailable",
            "message": "a stripe vault key for this request could not be issued; try again later",
        }
        assert await fetch("GET", f"{url}/health") == (200, {"status": "ok"})  # still serving


async def test_without_the_handler_the_503_is_fastapis(dead_kb: Keybrake) -> None:
    payments_key = vault_key_dependency("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=dead_kb)
    app = FastAPI()

    @app.post("/pay", dependencies=[Depends(payments_key)])
    async def pay() -> dict[str, str]:
        raise AssertionError("not reached")

    async with serving(app) as url:
        status, body = await fetch("POST", f"{url}/pay")
    assert status == 503
    assert body["detail"]["code"] == "vault_key_unavailable"


async def test_the_docs_example_runs(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYBRAKE_URL", server.url)
    monkeypatch.setenv("KEYBRAKE_TOKEN", server.admin_token)
    app = runpy.run_path(str(EXAMPLES / "fastapi_app.py"))["app"]
    async with server.client() as kb, serving(app) as url:
        status, body = await fetch(
            "POST", f"{url}/pay", params={"amount": "2000"}, headers={"X-User-Id": "u1"}
        )
        assert status == 200
        assert body["payment_intent"].startswith("pi_")
        [key] = await keys_issued(kb)
        info = await wait_until_revoked(kb, key.id)
        assert info.label == "POST /pay x-user-id=u1"

        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/pay/stream", params={"amount": "500"}) as response,
        ):
            lines = [json.loads(line) async for line in response.content]
        assert lines[0] == {"step": "creating"}
        assert lines[1]["payment_intent"].startswith("pi_")
        for key in await keys_issued(kb):
            await wait_until_revoked(kb, key.id)


async def test_a_spec_describes_the_requests_key(kb: Keybrake) -> None:
    spec = KeySpec(
        "stripe", SEED_ENDPOINTS, cap=50, ttl="1m", label="checkout", metadata={"t": "b"}
    )
    payments_key = vault_key_dependency(spec, client=kb, label_headers=["X-User-Id"])
    app = FastAPI()

    @app.post("/pay")
    async def pay(vk: Annotated[VaultKey, Depends(payments_key)]) -> dict[str, str]:
        pi = await vk.stripe.payment_intents.create(amount=2000, currency="usd")
        return {"id": pi.id, "key": vk.id}

    async with serving(app) as url:
        status, body = await fetch("POST", f"{url}/pay", headers={"X-User-Id": "u1"})
    assert status == 200
    info = await wait_until_revoked(kb, body["key"])
    assert info.label == "checkout x-user-id=u1"
    assert info.metadata == {"x-user-id": "u1", "t": "b"}
    assert info.spent_today_usd == 20
