"""aiohttp.web: a vault key per request through a middleware, on a real loopback server."""

from __future__ import annotations

import asyncio
import json
import runpy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from keybrake import Keybrake
from keybrake.integrations.aiohttp_web import VAULT_KEY, vault_key_middleware
from tests.conftest import SEED_ENDPOINTS, RunningServer
from tests.integrations.conftest import EXAMPLES, keys_issued, wait_until_revoked


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


async def fetch(method: str, url: str, **kwargs: Any) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text), text + str(response.headers)


async def pay(request: web.Request) -> web.Response:
    vk = request[VAULT_KEY]
    pi = await vk.stripe.payment_intents.create(amount=2000, currency="usd")
    return web.json_response({"id": pi.id, "key": vk.id})


async def has_key(request: web.Request) -> web.Response:
    return web.json_response({"key": VAULT_KEY in request})


def test_the_middleware_is_new_style(kb: Keybrake) -> None:
    middleware = vault_key_middleware("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)
    assert getattr(middleware, "__middleware_version__", None) == 1  # no DeprecationWarning
    assert repr(VAULT_KEY).endswith("aiohttp_web.vault_key, type=keybrake._vault_key.VaultKey)>")


async def test_a_request_gets_a_labelled_key_revoked_after_it(kb: Keybrake) -> None:
    app = web.Application(
        middlewares=[
            vault_key_middleware(
                "stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb, path_prefix="/payments/"
            )
        ]
    )
    app.router.add_post("/payments/{kind}", pay)
    app.router.add_get("/health", has_key)
    async with serving(app) as url:
        headers = {"X-User-Id": "alice", "X-Agent-Run-Id": "run-42"}
        status, body, seen = await fetch("POST", f"{url}/payments/card", headers=headers)
        assert status == 200
        assert body["id"].startswith("pi_")
        info = await wait_until_revoked(kb, body["key"])
        assert info.label == "POST /payments/{kind} x-user-id=alice x-agent-run-id=run-42"
        assert info.metadata == {"x-user-id": "alice", "x-agent-run-id": "run-42"}
        assert "vault_key_" not in seen  # the token never reaches the client
        # Outside the prefix, and for unknown paths: no key.
        assert (await fetch("GET", f"{url}/health"))[:2] == (200, {"key": False})
        async with aiohttp.ClientSession() as http, http.get(f"{url}/payments/x") as r:
            assert r.status == 405
    assert len(await keys_issued(kb)) == 1


async def test_a_stream_keeps_its_key_until_fully_written(kb: Keybrake) -> None:
    go_on = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        vk = request[VAULT_KEY]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {vk.id}\n\n".encode())
        await go_on.wait()  # the client has the first event: the response is under way
        pi = await vk.stripe.payment_intents.create(amount=500, currency="usd")
        await response.write(f"data: {pi.id}\n\n".encode())
        return response  # no write_eof(): the middleware finishes it before revoking

    app = web.Application(
        middlewares=[vault_key_middleware("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)]
    )
    app.router.add_get("/events", events)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/events") as response:
            key_id = (await response.content.readline()).decode().removeprefix("data: ").strip()
            assert (await kb.get_key(key_id)).status == "active"
            go_on.set()
            rest = (await response.content.read()).decode()
        assert "data: pi_" in rest
        await wait_until_revoked(kb, key_id)


async def test_sub_apps_have_their_own_scopes(kb: Keybrake) -> None:
    async def vendor(request: web.Request) -> web.Response:
        vk = request[VAULT_KEY]
        return web.json_response({"vendor": vk.vendor, "key": vk.id})

    payments = web.Application(
        middlewares=[vault_key_middleware("stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=kb)]
    )
    payments.router.add_get("/who", vendor)
    messages = web.Application(
        middlewares=[
            vault_key_middleware(
                "twilio", ["/2010-04-01/Accounts/*/Messages.json"], cap=5, ttl="1m", client=kb
            )
        ]
    )
    messages.router.add_get("/who", vendor)
    app = web.Application()
    app.add_subapp("/payments/", payments)
    app.add_subapp("/messages/", messages)
    app.router.add_get("/health", has_key)

    async with serving(app) as url:
        assert (await fetch("GET", f"{url}/health"))[:2] == (200, {"key": False})
        _, stripe, _ = await fetch("GET", f"{url}/payments/who")
        _, twilio, _ = await fetch("GET", f"{url}/messages/who")
    assert stripe["vendor"] == "stripe"
    assert twilio["vendor"] == "twilio"
    keys = {k.id: k for k in await keys_issued(kb)}
    assert set(keys) == {stripe["key"], twilio["key"]}
    assert keys[stripe["key"]].label == "GET /payments/who"
    for key_id in keys:
        await wait_until_revoked(kb, key_id)


async def test_issuance_down_answers_503_without_calling_the_handler(dead_kb: Keybrake) -> None:
    called: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        called.append(True)
        return web.json_response({})

    app = web.Application(
        middlewares=[
            vault_key_middleware(
                "stripe", SEED_ENDPOINTS, cap=50, ttl="1m", client=dead_kb, path_prefix="/pay"
            )
        ]
    )
    app.router.add_post("/pay", handler)
    app.router.add_get("/health", has_key)
    async with serving(app) as url:
        status, body, _ = await fetch("POST", f"{url}/pay")
        assert status == 503
        assert body == {
            "code": "vault_key_unavailable",
            "message": "a stripe vault key for this request could not be issued; try again later",
        }
        assert (await fetch("GET", f"{url}/health"))[:2] == (200, {"key": False})
    assert called == []


async def test_the_docs_example_runs(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYBRAKE_URL", server.url)
    monkeypatch.setenv("KEYBRAKE_TOKEN", server.admin_token)
    app = runpy.run_path(str(EXAMPLES / "aiohttp_app.py"))["create_app"]()
    async with server.client() as kb, serving(app) as url:
        status, body, _ = await fetch(
            "POST", f"{url}/payments/pay", params={"amount": "2000"}, headers={"X-User-Id": "u1"}
        )
        assert status == 200
        assert body["payment_intent"].startswith("pi_")
        [key] = await keys_issued(kb)
        info = await wait_until_revoked(kb, key.id)
        assert info.label == "POST /payments/pay x-user-id=u1"

        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/payments/events", params={"amount": "500"}) as response,
        ):
            text = (await response.read()).decode()
        assert "event: created\ndata: pi_" in text
        for key in await keys_issued(kb):
            await wait_until_revoked(kb, key.id)
        assert (await fetch("GET", f"{url}/health"))[:2] == (200, {"status": "ok"})
