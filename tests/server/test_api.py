"""The issuance API: validation, auth, idempotency, refresh and revoke semantics."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from keybrake._common import parse_time
from keybrake.server.http import deadlines
from keybrake.server.stores.base import StoreUnavailable
from keybrake.server.stores.sqlite.store import SQLiteStore
from tests.adversarial.rawhttp import first_answer
from tests.conftest import RunningServer
from tests.server.test_seed_flow import SEED_BODY


async def call(
    server: RunningServer,
    method: str,
    path: str,
    *,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    auth = {"Authorization": f"Bearer {token or server.admin_token}", **(headers or {})}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, json=body, data=raw, headers=auth) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"vendor": "paypal"}, "vendor"),
        ({"allowed_endpoints": []}, "allowed_endpoints"),
        ({"allowed_endpoints": "/v1/charges"}, "allowed_endpoints"),
        ({"allowed_endpoints": ["/v1/../keys"]}, "allowed_endpoints"),
        ({"allowed_endpoints": ["/v1/**/x"]}, "allowed_endpoints"),
        ({"daily_usd_cap": -5}, "daily_usd_cap"),
        ({"daily_usd_cap": "ten"}, "daily_usd_cap"),
        ({"daily_usd_cap": "0.0000001"}, "daily_usd_cap"),
        ({"daily_usd_cap": True}, "daily_usd_cap"),
        ({"expires_in": "forever"}, "expires_in"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": "90d"}, "expires_in"),
        ({"max_lifetime": "1m"}, "max_lifetime"),
        ({"label": 5}, "label"),
        ({"metadata": {"a": 1}}, "metadata"),
        # Labels and metadata an operator reads: nothing that hides, nothing huge.
        ({"label": "run\u200b-42"}, "label"),
        ({"label": "\u202esdnufer-24-nur"}, "label"),
        ({"label": "run-42\nrun-43"}, "label"),
        ({"metadata": {"user": "a\x1bb"}}, "metadata"),
        ({"metadata": {"": "x"}}, "metadata"),
        ({"metadata": {"k" * 65: "x"}}, "metadata"),
        ({"metadata": {"k": "<" * 513}}, "metadata"),
        ({"metadata": {f"k{n}": "v" * 500 for n in range(20)}}, "metadata"),
    ],
)
async def test_bad_issue_requests_are_400_with_a_param(
    server: RunningServer, change: dict[str, Any], param: str
) -> None:
    status, body = await call(server, "POST", "/v1/keys", body={**SEED_BODY, **change})
    assert status == 400
    assert body["code"] == "bad_request"
    assert body["param"] == param
    assert body["message"]


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff\xfe", b'"text"'])
async def test_malformed_json_is_400(server: RunningServer, raw: bytes) -> None:
    status, body = await call(
        server, "POST", "/v1/keys", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert (status, body["code"]) == (400, "bad_request")


async def test_a_body_that_never_arrives_is_a_408(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadlines, "BODY_TIMEOUT", 0.2)
    answer = await first_answer(
        server.url,
        f"POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer


async def test_cap_accepts_numbers_and_decimal_strings(server: RunningServer) -> None:
    # JSON numbers are read as decimals, never floats: 0.1 is ten cents exactly.
    for cap, shown in ((500, "500.00"), ("12.345", "12.345"), (0, "0.00"), (0.1, "0.10")):
        status, body = await call(
            server, "POST", "/v1/keys", body={**SEED_BODY, "daily_usd_cap": cap}
        )
        assert status == 201
        assert body["daily_usd_cap"] == shown
    status, body = await call(
        server,
        "POST",
        "/v1/keys",
        raw=b'{"vendor": "stripe", "allowed_endpoints": ["/v1/x"], "daily_usd_cap": 12.5,'
        b' "expires_in": 60}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 201
    assert body["daily_usd_cap"] == "12.50"


@pytest.mark.parametrize("token", ["", "kb_admin_wrong"])
async def test_unknown_master_token_is_401(server: RunningServer, token: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/v1/keys", json=SEED_BODY, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status == 401
        assert (await response.json())["code"] == "unauthorized"


async def test_idempotent_issue_returns_the_same_key_and_token(server: RunningServer) -> None:
    headers = {"Idempotency-Key": "run-42-attempt"}
    first_status, first = await call(server, "POST", "/v1/keys", body=SEED_BODY, headers=headers)
    second_status, second = await call(server, "POST", "/v1/keys", body=SEED_BODY, headers=headers)
    assert first_status == second_status == 201
    assert second["id"] == first["id"]
    assert second["token"] == first["token"]
    status, body = await call(
        server, "POST", "/v1/keys", body={**SEED_BODY, "label": "other"}, headers=headers
    )
    assert (status, body["code"]) == (422, "idempotency_key_reused")
    # The sealed token in the store is not the token.
    assert first["token"].encode() not in server.db_path.read_bytes()


async def test_refresh_follows_the_lease_model(server: RunningServer) -> None:
    _, key = await call(
        server, "POST", "/v1/keys", body={**SEED_BODY, "expires_in": 10, "max_lifetime": 20}
    )
    status, lease = await call(
        server, "POST", f"/v1/keys/{key['id']}/refresh", body={"expires_in": 15}
    )
    assert status == 200
    assert parse_time(lease["expires_at"]) > parse_time(key["expires_at"])
    status, lease = await call(
        server, "POST", f"/v1/keys/{key['id']}/refresh", body={"expires_in": "1h"}
    )
    assert status == 200
    assert lease["expires_at"] == key["max_expires_at"] == lease["max_expires_at"]


async def test_refresh_of_a_revoked_or_expired_key_is_409(server: RunningServer) -> None:
    _, key = await call(server, "POST", "/v1/keys", body=SEED_BODY)
    await call(server, "DELETE", f"/v1/keys/{key['id']}")
    status, body = await call(
        server, "POST", f"/v1/keys/{key['id']}/refresh", body={"expires_in": 60}
    )
    assert (status, body["code"]) == (409, "key_revoked")

    _, short = await call(server, "POST", "/v1/keys", body={**SEED_BODY, "expires_in": 1})
    await asyncio.sleep(1.1)
    status, body = await call(
        server, "POST", f"/v1/keys/{short['id']}/refresh", body={"expires_in": 60}
    )
    assert (status, body["code"]) == (409, "key_expired")
    status, body = await call(server, "GET", f"/v1/keys/{short['id']}")
    assert body["status"] == "expired"


async def test_revoke_is_idempotent(server: RunningServer) -> None:
    _, key = await call(server, "POST", "/v1/keys", body=SEED_BODY)
    _, first = await call(server, "DELETE", f"/v1/keys/{key['id']}")
    status, second = await call(server, "DELETE", f"/v1/keys/{key['id']}")
    assert status == 200
    assert first == second
    assert second["status"] == "revoked"


async def test_unknown_key_is_404(server: RunningServer) -> None:
    for method, path in (
        ("GET", "/v1/keys/vk_nope"),
        ("DELETE", "/v1/keys/vk_nope"),
        ("POST", "/v1/keys/vk_nope/refresh"),
    ):
        status, body = await call(server, method, path, body={"expires_in": 60})
        assert (status, body["code"]) == (404, "key_not_found")


async def test_healthz(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_concurrent_issues_with_one_idempotency_key_make_one_key(
    server: RunningServer,
) -> None:
    headers = {"Idempotency-Key": "same-everywhere"}
    answers = await asyncio.gather(
        *(call(server, "POST", "/v1/keys", body=SEED_BODY, headers=headers) for _ in range(8))
    )
    assert {status for status, _ in answers} == {201}
    assert len({body["id"] for _, body in answers}) == 1
    assert len({body["token"] for _, body in answers}) == 1


async def test_api_routes_that_do_not_exist_are_404_not_found(server: RunningServer) -> None:
    status, body = await call(server, "GET", "/v1/nothing-here")
    assert (status, body["code"]) == (404, "not_found")


async def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.close()
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailable, match="schema version 1"):
        await store.open()
    await store.close()


async def test_a_lone_surrogate_is_400_and_the_store_stays_usable(server: RunningServer) -> None:
    status, body = await call(
        server,
        "POST",
        "/v1/keys",
        raw=b'{"vendor": "stripe", "allowed_endpoints": ["/v1/x"], "daily_usd_cap": 1,'
        b' "expires_in": 60, "label": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["code"]) == (400, "bad_request")
    status, _ = await call(server, "POST", "/v1/keys", body=SEED_BODY)
    assert status == 201
