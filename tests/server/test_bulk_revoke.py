"""``POST /v1/keys/revoke``: the operator's kill switch, on a real server on each store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from keybrake import ConfigurationError, IssuanceError, Keybrake
from keybrake.server import running_server
from keybrake.server.api.tokens import create_admin_token
from keybrake.server.stores import open_store
from tests.conftest import SEED_ENDPOINTS, RunningServer, make_config
from tests.pg import migrated_schema
from tests.server.test_api import call


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_server(
    request: pytest.FixtureRequest, tmp_path: Path, localstripe_url: str
) -> AsyncIterator[RunningServer]:
    """A server on SQLite, then one on PostgreSQL."""
    db_path = tmp_path / "keybrake.db"
    if request.param == "sqlite":
        config = make_config(db_path, localstripe_url)
        async with running_server(config) as url:
            assert config.admin_token is not None
            yield RunningServer(url, config.admin_token, db_path, config)
    else:
        async with migrated_schema() as database:
            config = make_config(db_path, localstripe_url, database_url=database)
            async with running_server(config) as url:
                assert config.admin_token is not None
                yield RunningServer(url, config.admin_token, db_path, config)


async def tenant_token(server: RunningServer, tenant: str) -> str:
    """A master token of another tenant, made in the server's store (on either store)."""
    store = open_store(server.config.database_url)
    await store.open()
    try:
        return (await create_admin_token(store, tenant))[1]
    finally:
        await store.close()


async def issue(
    server: RunningServer,
    label: str,
    *,
    token: str | None = None,
    vendor: str = "stripe",
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "label": label,
        "vendor": vendor,
        "allowed_endpoints": SEED_ENDPOINTS,
        "daily_usd_cap": 100,
        "expires_in": "5m",
        "metadata": metadata or {},
    }
    status, key = await call(server, "POST", "/v1/keys", body=body, token=token)
    assert status == 201, key
    return key


async def pay(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str | None]:
    async with http.post(
        f"{url}/stripe/v1/payment_intents",
        data={"amount": "100", "currency": "usd"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body.get("code") if isinstance(body, dict) else None


async def statuses(server: RunningServer, token: str | None = None) -> dict[str, str]:
    status, page = await call(server, "GET", "/v1/keys?limit=100", token=token)
    assert status == 200
    assert not page["has_more"]
    return {key["id"]: key["status"] for key in page["data"]}


async def test_the_proxy_refuses_every_key_revoked_in_bulk_on_its_next_request(
    any_server: RunningServer,
) -> None:
    server = any_server
    run = [await issue(server, f"run-42-{i}", metadata={"run": "42"}) for i in range(3)]
    other = await issue(server, "run-43", metadata={"run": "43"})
    async with aiohttp.ClientSession() as http:
        # Each key has served a request: the proxy has read (and may remember) it.
        for key in (*run, other):
            assert (await pay(http, server.url, key["token"]))[0] == 200
        status, body = await call(
            server, "POST", "/v1/keys/revoke", body={"metadata": {"run": "42"}}
        )
        assert status == 200
        assert body == {"revoked": 3, "ids": sorted(key["id"] for key in run)}
        for key in run:
            assert await pay(http, server.url, key["token"]) == (401, "key_revoked")
        assert (await pay(http, server.url, other["token"]))[0] == 200
    assert (await statuses(server))[other["id"]] == "active"


async def test_filters_are_anded_and_only_active_keys_are_revoked(server: RunningServer) -> None:
    a = await issue(server, "run-7-a", metadata={"user": "ann", "run": "7"})
    b = await issue(server, "run-7-b", vendor="twilio", metadata={"user": "ann", "run": "7"})
    c = await issue(server, "RUN-7-c", metadata={"user": "ann", "run": "7"})
    gone = await issue(server, "run-7-gone", metadata={"user": "ann", "run": "7"})
    await call(server, "DELETE", f"/v1/keys/{gone['id']}")

    status, body = await call(
        server,
        "POST",
        "/v1/keys/revoke",
        body={"label_prefix": "run-7", "metadata": {"user": "ann"}, "vendor": "twilio"},
    )
    assert (status, body) == (200, {"revoked": 1, "ids": [b["id"]]})
    status, body = await call(
        server, "POST", "/v1/keys/revoke", body={"label_prefix": "run-7", "all": True}
    )
    assert (status, body) == (200, {"revoked": 1, "ids": [a["id"]]})  # not RUN-7-c, not gone
    status, body = await call(server, "POST", "/v1/keys/revoke", body={"all": True})
    assert (status, body) == (200, {"revoked": 1, "ids": [c["id"]]})
    status, body = await call(server, "POST", "/v1/keys/revoke", body={"all": True})
    assert (status, body) == (200, {"revoked": 0, "ids": []})


async def test_a_bulk_revoke_touches_only_the_callers_tenant(any_server: RunningServer) -> None:
    server = any_server
    theirs_token = await tenant_token(server, "team-b")
    mine = await issue(server, "run-1", metadata={"run": "1"})
    theirs = await issue(server, "run-1", token=theirs_token, metadata={"run": "1"})

    for body in ({"all": True}, {"label_prefix": "run"}, {"metadata": {"run": "1"}}):
        status, answer = await call(
            server, "POST", "/v1/keys/revoke", body=body, token=theirs_token
        )
        assert status == 200
        assert mine["id"] not in answer["ids"]
    assert await statuses(server) == {mine["id"]: "active"}
    assert await statuses(server, theirs_token) == {theirs["id"]: "revoked"}
    async with aiohttp.ClientSession() as http:
        assert (await pay(http, server.url, mine["token"]))[0] == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "all"),
        ({"all": False}, "all"),
        ({"all": "true"}, "all"),
        ({"all": 1}, "all"),
        ({"label_prefix": ""}, "label_prefix"),
        ({"label_prefix": 5}, "label_prefix"),
        ({"label_prefix": "x" * 201}, "label_prefix"),
        ({"metadata": {}}, "metadata"),
        ({"metadata": {"run": 42}}, "metadata"),
        ({"metadata": ["run", "42"]}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
        ({"vendor": "paypal"}, "vendor"),
        ({"vendor": ["stripe"]}, "vendor"),
        ({"all": True, "label": "run"}, "label"),
        ({"all": True, "status": "active"}, "status"),
        ({"label_prefix": None}, "label_prefix"),
        ({"all": True, "vendor": None}, "vendor"),
        ({"metadata": None}, "metadata"),
        ({"all": None}, "all"),
    ],
)
async def test_a_bad_bulk_revoke_is_400_with_a_param_and_revokes_nothing(
    server: RunningServer, body: dict[str, Any], param: str
) -> None:
    key = await issue(server, "run")
    status, answer = await call(server, "POST", "/v1/keys/revoke", body=body)
    assert (status, answer["code"], answer.get("param")) == (400, "bad_request", param)
    assert answer["message"]
    assert (await statuses(server))[key["id"]] == "active"


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"all"', b"null"])
async def test_a_bulk_revoke_without_a_json_object_is_400(
    server: RunningServer, raw: bytes
) -> None:
    key = await issue(server, "run")
    status, answer = await call(
        server, "POST", "/v1/keys/revoke", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert (status, answer["code"]) == (400, "bad_request")
    assert (await statuses(server))[key["id"]] == "active"


@pytest.mark.parametrize("token", ["", "kb_admin_wrong"])
async def test_a_bulk_revoke_needs_a_master_token(server: RunningServer, token: str) -> None:
    key = await issue(server, "run")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/v1/keys/revoke",
            json={"all": True},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 401
        assert (await response.json())["code"] == "unauthorized"
    assert (await statuses(server))[key["id"]] == "active"


async def test_revoke_is_not_a_key_id(server: RunningServer) -> None:
    """The bulk route and the routes of one key (``/v1/keys/{id}``) never mix up."""
    key = await issue(server, "run")
    for method in ("GET", "DELETE"):
        status, body = await call(server, method, "/v1/keys/revoke")
        assert (status, body["code"]) == (404, "key_not_found")
    status, body = await call(server, "POST", "/v1/keys/revoke/refresh", body={"expires_in": 60})
    assert (status, body["code"]) == (404, "key_not_found")
    status, body = await call(server, "GET", f"/v1/keys/{key['id']}")
    assert (status, body["status"]) == (200, "active")
    # A key's own id in the bulk route's place is no route at all.
    status, body = await call(server, "POST", f"/v1/keys/{key['id']}", body={"all": True})
    assert (status, body["code"]) == (405, "method_not_allowed")
    assert (await statuses(server))[key["id"]] == "active"


async def test_a_key_issued_during_a_bulk_revoke_is_either_revoked_or_left_active(
    any_server: RunningServer,
) -> None:
    """Issuances race bulk revocations: every key ends up either in one revocation's ids (and
    revoked, and refused by the proxy) or active and in none; never revoked unreported, never
    reported but active."""
    server = any_server

    async def revoke_soon(delay: float) -> list[str]:
        await asyncio.sleep(delay)
        status, body = await call(server, "POST", "/v1/keys/revoke", body={"label_prefix": "race"})
        assert status == 200
        assert body["revoked"] == len(body["ids"])
        ids: list[str] = body["ids"]
        return ids

    async def issue_soon(i: int) -> dict[str, Any]:
        await asyncio.sleep(0.005 * i)
        return await issue(server, f"race-{i}", metadata={"run": "race"})

    # Issuances go on for longer than the revocations: some keys come after the last one.
    issued = [asyncio.ensure_future(issue_soon(i)) for i in range(60)]
    revocations = await asyncio.gather(*(revoke_soon(0.02 * i) for i in range(6)))
    keys = await asyncio.gather(*issued)

    reported = [key_id for ids in revocations for key_id in ids]
    assert len(reported) == len(set(reported)), "a key was revoked twice"
    now = await statuses(server)
    revoked = {key["id"] for key in keys if now[key["id"]] == "revoked"}
    active = {key["id"] for key in keys if now[key["id"]] == "active"}
    assert revoked | active == {key["id"] for key in keys}
    assert set(reported) == revoked
    assert revoked, "no revocation overlapped the issuances"
    assert active, "no key came after the last revocation"
    async with aiohttp.ClientSession() as http:
        for key in keys:
            if key["id"] in revoked:
                assert await pay(http, server.url, key["token"]) == (401, "key_revoked")
    # What was left active is caught by the next call.
    status, body = await call(server, "POST", "/v1/keys/revoke", body={"metadata": {"run": "race"}})
    assert (status, set(body["ids"])) == (200, active)


async def test_the_sdk_revokes_in_bulk(server: RunningServer, kb: Keybrake) -> None:
    a = await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl="5m", label="job-1/a")
    b = await kb.issue_key("twilio", ["/**"], cap=1, ttl="5m", label="job-1/b")
    c = await kb.issue_key(
        "stripe", SEED_ENDPOINTS, cap=1, ttl="5m", label="job-2", metadata={"user": "ann"}
    )
    assert await kb.revoke_keys(label_prefix="job-1/", vendor="twilio") == [b.id]
    assert await kb.revoke_keys(metadata={"user": "ann"}) == [c.id]
    assert await kb.revoke_keys(label_prefix="job-1/") == [a.id]
    assert await kb.revoke_keys(all=True) == []
    assert {k.id: k.status async for k in kb.list_keys()} == {
        a.id: "revoked",
        b.id: "revoked",
        c.id: "revoked",
    }


async def test_the_sdk_refuses_a_bulk_revoke_without_a_filter(
    server: RunningServer, kb: Keybrake
) -> None:
    key = await kb.issue_key("stripe", SEED_ENDPOINTS, cap=1, ttl="5m")
    with pytest.raises(ConfigurationError, match="at least one filter"):
        await kb.revoke_keys()
    with pytest.raises(ConfigurationError):
        await kb.revoke_keys(all=False)
    with pytest.raises(IssuanceError) as caught:
        await kb.revoke_keys(label_prefix="")
    assert (caught.value.status, caught.value.code) == (400, "bad_request")
    assert (await kb.get_key(key.id)).status == "active"
