"""Durable audit (``keybrake serve --audit durable``): a proxy answer goes back only once its
audit entry is committed; an entry that can't be written answers 503 ``audit_unavailable``."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import attrs
import pytest

from keybrake.server import running_server
from keybrake.server.config import ServerConfig
from tests.conftest import make_config
from tests.pg import PG_URL, migrated_schema
from tests.recorder import Proxy, Recorder

Row = tuple[str, int, int, float | None]


@attrs.frozen
class Served:
    proxy: Proxy
    #: The audit table as the store has it now: (decision, status, settled, upstream_ms).
    audit: Callable[[], Awaitable[list[Row]]]
    #: Make every write to the audit table fail (True), or stop that (False).
    break_audit: Callable[[bool], Awaitable[None]]


@asynccontextmanager
async def sqlite_server(tmp_path: Path, recorder: Recorder, audit: str) -> AsyncIterator[Served]:
    db = tmp_path / "kb.db"

    async def rows() -> list[Row]:
        with sqlite3.connect(db) as conn:
            found = conn.execute(
                "SELECT decision, status, settled, upstream_ms FROM audit ORDER BY id"
            ).fetchall()
        return [(r[0], int(r[1]), int(r[2]), r[3]) for r in found]

    async def break_audit(broken: bool) -> None:
        with sqlite3.connect(db) as conn:
            if broken:
                conn.execute(
                    "CREATE TRIGGER audit_fails BEFORE INSERT ON audit"
                    " BEGIN SELECT RAISE(ABORT, 'the audit disk is full'); END"
                )
            else:
                conn.execute("DROP TRIGGER audit_fails")

    config = make_config(db, recorder.url, audit=audit)
    async with running_server(config) as url:
        assert config.admin_token is not None
        yield Served(Proxy(url, config.admin_token), rows, break_audit)


@asynccontextmanager
async def postgres_server(recorder: Recorder, audit: str) -> AsyncIterator[Served]:
    async with migrated_schema() as database_url:
        schema = database_url.partition("schema=")[2]
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})

        async def rows() -> list[Row]:
            found = await conn.fetch(
                "SELECT decision, status, settled, upstream_ms FROM audit ORDER BY id"
            )
            return [(r[0], int(r[1]), int(r[2]), r[3]) for r in found]

        async def break_audit(broken: bool) -> None:
            if broken:
                await conn.execute(
                    "CREATE FUNCTION audit_fails() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$BEGIN RAISE EXCEPTION 'the audit disk is full'; END$$;"
                    " CREATE TRIGGER audit_fails BEFORE INSERT ON audit"
                    " FOR EACH ROW EXECUTE FUNCTION audit_fails()"
                )
            else:
                await conn.execute("DROP TRIGGER audit_fails ON audit")

        config = make_config(Path("unused"), recorder.url, audit=audit)
        config = attrs.evolve(config, database_url=database_url)
        try:
            async with running_server(config) as url:
                assert config.admin_token is not None
                yield Served(Proxy(url, config.admin_token), rows, break_audit)
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def durable(
    request: pytest.FixtureRequest, tmp_path: Path, recorder: Recorder
) -> AsyncIterator[Served]:
    """A server with ``audit="durable"`` in front of the recording upstream."""
    recorder.answer = {"id": "pi_durable", "object": "payment_intent", "amount": 250}
    if request.param == "sqlite":
        async with sqlite_server(tmp_path, recorder, "durable") as served:
            yield served
    else:
        async with postgres_server(recorder, "durable") as served:
            yield served


async def post(proxy: Proxy, token: str, path: str = "/stripe/v1/payment_intents") -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.url + path,
            data="amount=250&currency=usd",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        ) as response,
    ):
        return response.status, await response.json()


async def test_an_answer_comes_back_only_once_its_entry_is_in_the_store(
    durable: Served, recorder: Recorder
) -> None:
    key = await durable.proxy.issue(allowed_endpoints=["POST /v1/payment_intents"])

    status, _ = await post(durable.proxy, key["token"])
    assert status == 200
    # No waiting: the entry was committed before the answer left.
    [(decision, code, settled, upstream_ms)] = await durable.audit()
    assert (decision, code, settled) == ("allowed", 200, 2_500_000)
    assert upstream_ms is not None

    # A refusal too: its entry is written before the refusal goes back.
    status, body = await post(durable.proxy, key["token"], "/stripe/v1/refunds")
    assert (status, body["code"]) == (403, "endpoint_not_allowed")
    assert [row[:2] for row in await durable.audit()] == [
        ("allowed", 200),
        ("endpoint_not_allowed", 403),
    ]
    assert len(recorder.requests) == 1


async def test_an_entry_that_cant_be_written_answers_503_audit_unavailable(
    durable: Served, recorder: Recorder
) -> None:
    key = await durable.proxy.issue(allowed_endpoints=["POST /v1/payment_intents"])
    await durable.break_audit(True)

    status, body = await post(durable.proxy, key["token"])

    assert status == 503
    assert body["code"] == "audit_unavailable"
    assert "stripe did receive the request and answered 200" in body["message"]
    # The entry records the vendor's answer, so it is written after the vendor answered:
    # the vendor was called, and what it cost is counted.
    assert len(recorder.requests) == 1
    for _ in range(100):
        if await durable.proxy.spend(key["id"]) == "2.50":
            break
        await asyncio.sleep(0.05)
    assert await durable.proxy.spend(key["id"]) == "2.50"

    # A refusal whose entry can't be written is refused the same way; nothing forwarded.
    status, body = await post(durable.proxy, key["token"], "/stripe/v1/refunds")
    assert (status, body["code"]) == (503, "audit_unavailable")
    assert body["message"].endswith("nothing was forwarded")
    assert len(recorder.requests) == 1

    # Once the store takes entries again, the 503s are in the audit log, as they happened.
    await durable.break_audit(False)
    for _ in range(100):
        if len(await durable.audit()) == 2:
            break
        await asyncio.sleep(0.05)
    rows = await durable.audit()
    assert [row[:3] for row in rows] == [
        ("audit_unavailable", 503, 2_500_000),
        ("audit_unavailable", 503, 0),
    ]
    assert rows[0][3] is not None  # the vendor's answer time: it was called
    status, _ = await post(durable.proxy, key["token"])
    assert status == 200


async def test_batched_audit_stays_the_default(tmp_path: Path, recorder: Recorder) -> None:
    assert ServerConfig().audit == "batched"
    assert ServerConfig.from_env({"KEYBRAKE_AUDIT": "durable"}).audit == "durable"
    with pytest.raises(ValueError, match="audit must be 'batched' or 'durable'"):
        ServerConfig.from_env({"KEYBRAKE_AUDIT": "sync"})
    # Batched: a broken audit table doesn't hold the answer back.
    async with sqlite_server(tmp_path, recorder, "batched") as served:
        key = await served.proxy.issue(allowed_endpoints=["POST /v1/payment_intents"])
        await served.break_audit(True)
        status, _ = await post(served.proxy, key["token"])
        assert status == 200
