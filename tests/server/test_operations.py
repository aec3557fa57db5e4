"""Operating the server: tenants, the audit log, usage, metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from keybrake import IssuanceError, Keybrake, VaultKey
from keybrake.server import running_server
from keybrake.server.api.tokens import create_admin_token
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.conftest import SEED_ENDPOINTS, RunningServer, make_config
from tests.test_cli import free_port


async def tenant_token(server: RunningServer, tenant: str) -> str:
    store = SQLiteStore(server.db_path)
    await store.open()
    try:
        return (await create_admin_token(store, tenant))[1]
    finally:
        await store.close()


async def test_tenants_cannot_touch_each_others_keys(server: RunningServer) -> None:
    other = await tenant_token(server, "team-b")
    async with (
        server.client() as mine,
        Keybrake(other, api_url=server.url, proxy_url=server.url) as theirs,
        VaultKey("stripe", SEED_ENDPOINTS, cap=50, ttl="5m", client=mine) as vk,
    ):
        await vk.stripe.payment_intents.create(amount=100, currency="usd")
        for attempt in (
            theirs.get_key(vk.id),
            theirs.revoke_key(vk.id),
            theirs.refresh_key(vk.id, expires_in=60),
        ):
            with pytest.raises(IssuanceError) as caught:
                await attempt
            assert (caught.value.status, caught.value.code) == (404, "key_not_found")
        assert [k.id async for k in theirs.list_keys()] == []
        assert [r async for r in theirs.audit()] == []
        assert [r async for r in theirs.audit(key_id=vk.id)] == []
        assert [u async for u in theirs.usage()] == []
        assert (await mine.get_key(vk.id)).status == "active"
        # The other team's own keys are theirs alone.
        async with VaultKey("stripe", SEED_ENDPOINTS, cap=1, ttl="5m", client=theirs) as b:
            assert [k.id async for k in theirs.list_keys()] == [b.id]
            assert b.id not in [k.id async for k in mine.list_keys()]


async def test_revoked_master_tokens_stop_working(server: RunningServer) -> None:
    store = SQLiteStore(server.db_path)
    await store.open()
    try:
        token_id, token = await create_admin_token(store, "temp")
        async with Keybrake(token, api_url=server.url, proxy_url=server.url) as kb:
            await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl=60)
            assert await store.revoke_admin_token(token_id, 1)
            with pytest.raises(IssuanceError) as caught:
                await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl=60)
        assert caught.value.status == 401
    finally:
        await store.close()


async def test_audit_records_every_decision_and_survives_a_restart(
    tmp_path: Path, localstripe_url: str
) -> None:
    config = make_config(tmp_path / "kb.db", localstripe_url)
    assert config.admin_token is not None
    async with (
        running_server(config) as url,
        Keybrake(config.admin_token, api_url=url, proxy_url=url) as kb,
    ):
        async with VaultKey(
            "stripe", SEED_ENDPOINTS, cap="20", ttl="5m", client=kb, label="audited"
        ) as vk:
            token = vk.token
            await vk.stripe.payment_intents.create(amount=1500, currency="usd")
            for attempt in (
                vk.stripe.payment_intents.create(amount=1000, currency="usd"),
                vk.stripe.request("GET", "/v1/customers"),
            ):
                with pytest.raises(Exception):  # noqa: B017, PT011 - refusals, checked below
                    await attempt
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{url}/stripe/v1/payment_intents?key={token}",  # a token pasted in a query
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 401
    # A fresh server on the same database: the log is still there.
    async with (
        running_server(config) as url,
        Keybrake(config.admin_token, api_url=url, proxy_url=url) as kb,
    ):
        records = [r async for r in kb.audit(key_id=vk.id)]
    assert [r.decision for r in records] == [
        "key_revoked",
        "endpoint_not_allowed",
        "cap_exhausted",
        "allowed",
    ]
    allowed = records[-1]
    assert (allowed.method, allowed.path, allowed.status) == ("POST", "/v1/payment_intents", 200)
    assert str(allowed.reserved_usd) == str(allowed.settled_usd) == "15.00"
    assert allowed.upstream_ms is not None
    assert allowed.label == "audited"
    assert records[1].status == 403
    assert str(records[2].reserved_usd) == "0.00"
    raw = (tmp_path / "kb.db").read_bytes()
    assert token.encode() not in raw
    assert token not in str([r.raw for r in records])


async def test_usage_and_spend_view(server: RunningServer) -> None:
    async with (
        server.client() as kb,
        VaultKey("stripe", SEED_ENDPOINTS, cap=30, ttl="5m", client=kb, label="usage") as vk,
    ):
        await vk.stripe.payment_intents.create(amount=1234, currency="usd")
        info = await kb.get_key(vk.id)
        assert info.raw["reserved_today_usd"] == "0.00"
        [row] = [u async for u in kb.usage(key_id=vk.id)]
    assert (row.label, str(row.spent_usd), str(row.daily_usd_cap)) == ("usage", "12.34", "30.00")
    assert row.day == info.created_at.strftime("%Y-%m-%d")


async def test_metrics(server: RunningServer) -> None:
    async with (
        server.client() as kb,
        VaultKey("stripe", SEED_ENDPOINTS, cap=30, ttl="5m", client=kb) as vk,
    ):
        await vk.stripe.payment_intents.create(amount=250, currency="usd")
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    assert 'keybrake_proxy_requests_total{vendor="stripe",decision="allowed"} 1' in text
    assert 'keybrake_spend_usd_total{vendor="stripe"} 2.500000' in text
    assert 'keybrake_upstream_latency_seconds_count{vendor="stripe"} 1' in text
    assert "keybrake_active_keys 1" in text


async def test_metrics_asks_for_its_token_when_the_server_has_one(
    tmp_path: Path, localstripe_url: str
) -> None:
    config = make_config(tmp_path / "kb.db", localstripe_url, metrics_token="scrape-me")
    async with running_server(config) as url, aiohttp.ClientSession() as http:
        for headers in (
            {},
            {"Authorization": "Bearer scrape-mE"},
            {"Authorization": "Bearer scrape-me-too"},
            {"Authorization": f"Bearer {config.admin_token}"},  # the master token is not it
            {"Authorization": "Basic c2NyYXBlLW1l"},
            {"Authorization": "scrape-me"},
        ):
            async with http.get(f"{url}/metrics", headers=headers) as response:
                assert response.status == 401, headers
                assert (await response.json())["code"] == "unauthorized"
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "keybrake_" not in await response.text()
        async with http.get(
            f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"}
        ) as response:
            assert response.status == 200
            assert "keybrake_active_keys 0" in await response.text()


async def test_audit_is_written_off_the_request_path(server: RunningServer) -> None:
    """The entry appears shortly after the answer, written by the background writer."""
    async with (
        server.client() as kb,
        VaultKey("stripe", SEED_ENDPOINTS, cap=30, ttl="5m", client=kb) as vk,
    ):
        await vk.stripe.payment_intents.create(amount=100, currency="usd")
        for _ in range(50):
            if [r async for r in kb.audit(key_id=vk.id)]:
                break
            await asyncio.sleep(0.05)
        assert [r.decision async for r in kb.audit(key_id=vk.id)] == ["allowed"]


# -- the OpenAPI document, checked by schemathesis against a real server ---------------------


@pytest.fixture
def served(tmp_path: Path, localstripe_url: str) -> Iterator[tuple[str, str]]:
    port = free_port()
    token = "kb_admin_schemathesis"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    env.update(
        KEYBRAKE_ADMIN_TOKEN=token,
        KEYBRAKE_STRIPE_SECRET_KEY="sk_test_schemathesis",
        KEYBRAKE_STRIPE_API_BASE=localstripe_url,
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keybrake.cli",
            "serve",
            "--port",
            str(port),
            "--database",
            f"sqlite:///{tmp_path / 'kb.db'}",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("keybrake serving on"):
            break
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
    "unsupported_method"
)


def schemathesis(url: str, token: str, *selection: str) -> subprocess.CompletedProcess[str]:
    st = Path(sys.executable).parent / "st"
    return subprocess.run(
        [
            str(st),
            "run",
            f"{url}/openapi.json",
            "-H",
            f"Authorization: Bearer {token}",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            "1",
            *selection,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_openapi_document_matches_the_issuance_api(served: tuple[str, str]) -> None:
    url, token = served
    result = schemathesis(url, token, "--exclude-path-regex", "^/(stripe|twilio)/")
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout


def test_openapi_document_matches_the_proxy(served: tuple[str, str]) -> None:
    url, token = served

    async def issue() -> str:
        async with Keybrake(token, api_url=url, proxy_url=url) as kb:
            return (await kb.issue_key("stripe", ["/**"], cap=100, ttl="10m")).token

    vault_key = asyncio.run(issue())
    result = schemathesis(url, vault_key, "--include-path-regex", "^/(stripe|twilio)/")
    assert result.returncode == 0, result.stdout[-6000:]


def test_every_api_route_is_in_the_openapi_document_and_back() -> None:
    from aiohttp import web

    from keybrake.server.api.openapi import openapi_document
    from keybrake.server.api.routes import add_routes
    from keybrake.vendors import installed_vendors

    app = web.Application()
    add_routes(app)
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, item in openapi_document()["paths"].items()
        if path.partition("/")[2].partition("/")[0] not in installed_vendors()
        for method in item
        if method != "parameters"
    }
    assert routed == documented
