"""The fast HTTP frame: what it serves itself, what it hands to aiohttp, and how it stops.

Requests are written as raw bytes, so the tests decide exactly what arrives and when. An
answer from aiohttp carries its ``Server`` header; the fast frame sends none, which tells
the two apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from keybrake.server import ServerConfig, front, running_server
from keybrake.server.app import create_app, uses_fast_http
from tests.conftest import make_config
from tests.recorder import Proxy, Recorder
from tests.server.test_ledger import ledger_of


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def by_aiohttp(self) -> bool:
        return "server" in self.headers

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One client connection, raw."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            await self.reader.readexactly(2)
        return Answer(status, headers, body)

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except ConnectionError:
            return True


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[Connection]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield Connection(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture
async def fast(tmp_path: Path, recorder: Recorder) -> AsyncIterator[Proxy]:
    config = make_config(
        tmp_path / "kb.db", recorder.url, max_body_size=4096, upstream_timeout=5.0, http="fast"
    )
    async with running_server(config) as url:
        assert config.admin_token is not None
        yield Proxy(url, config.admin_token)


def proxied(token: str, body: bytes = b"amount=100&currency=usd", **extra: str) -> bytes:
    headers = {
        "Host": "kb",
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": str(len(body)),
        **extra,
    }
    head = "POST /stripe/v1/payment_intents HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return head.encode() + b"\r\n" + body


def api_get(admin_token: str, key_id: str) -> bytes:
    return (
        f"GET /v1/keys/{key_id} HTTP/1.1\r\nHost: kb\r\nAuthorization: Bearer {admin_token}\r\n\r\n"
    ).encode()


async def test_plain_proxy_requests_are_served_by_the_fast_frame(
    fast: Proxy, recorder: Recorder
) -> None:
    key = await fast.issue()
    async with connect(fast.url) as conn:
        for _ in range(3):  # kept alive
            await conn.send(proxied(key["token"]))
            answer = await conn.answer()
            assert answer.status == 200
            assert answer.json() == {"id": "pi_recorded"}
            assert not answer.by_aiohttp
            assert answer.headers["content-type"].startswith("application/json")
            assert "date" in answer.headers
        await conn.send(proxied("kb_vk_nonsense"))
        refused = await conn.answer()
        assert (refused.status, refused.json()["code"]) == (401, "invalid_key")
        assert refused.headers["keybrake-error"] == "invalid_key"
        assert not refused.by_aiohttp
    assert len(recorder.requests) == 3
    assert recorder.requests[0][2]["Authorization"] == "Bearer sk_test_keybrake"


async def test_a_connection_goes_to_aiohttp_at_its_first_other_request(fast: Proxy) -> None:
    key = await fast.issue()
    async with connect(fast.url) as conn:
        await conn.send(proxied(key["token"]))
        assert not (await conn.answer()).by_aiohttp
        await conn.send(api_get(fast.admin_token, key["id"]))
        api = await conn.answer()
        assert api.by_aiohttp
        assert (api.status, api.json()["spent_today_usd"]) == (200, "1.00")
        # The connection stays with aiohttp, which serves the proxy as well.
        await conn.send(proxied(key["token"]))
        again = await conn.answer()
        assert (again.status, again.by_aiohttp) == (200, True)
    assert await fast.spend(key["id"]) == "2.00"


async def test_pipelined_requests_are_answered_in_order(fast: Proxy) -> None:
    key = await fast.issue(daily_usd_cap="2.5")
    async with connect(fast.url) as conn:
        await conn.send(
            proxied(key["token"])
            + proxied(key["token"])
            + proxied(key["token"])  # past the cap
            + api_get(fast.admin_token, key["id"])
        )
        answers = [await conn.answer() for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 429, 200]
    assert [a.by_aiohttp for a in answers] == [False, False, False, True]
    assert answers[3].json()["spent_today_usd"] == "2.00"


async def test_a_request_arriving_in_pieces_is_read_whole(fast: Proxy, recorder: Recorder) -> None:
    key = await fast.issue()
    raw = proxied(key["token"], b"amount=100&currency=usd&description=" + b"x" * 1000)
    async with connect(fast.url) as conn:
        for start in range(0, len(raw), 97):
            await conn.send(raw[start : start + 97])
            await asyncio.sleep(0.002)
        assert (await conn.answer()).status == 200
    assert recorder.requests[0][3].endswith(b"x" * 1000)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (
            "chunked body",
            b"POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: kb\r\n"
            b"Authorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"a\r\namount=100\r\nd\r\n&currency=usd\r\n0\r\n\r\n",
        ),
        (
            "HTTP/1.0",
            b"POST /stripe/v1/payment_intents HTTP/1.0\r\nHost: kb\r\n"
            b"Authorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 23\r\n\r\namount=100&currency=usd",
        ),
        (
            "Connection: upgrade",
            b"POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: kb\r\nConnection: upgrade\r\n"
            b"Authorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 23\r\n\r\namount=100&currency=usd",
        ),
    ],
)
async def test_unusual_requests_are_served_by_aiohttp(
    fast: Proxy, recorder: Recorder, name: str, raw: bytes
) -> None:
    key = await fast.issue()
    async with connect(fast.url) as conn:
        await conn.send(raw.replace(b"{token}", key["token"].encode()))
        answer = await conn.answer()
    assert (answer.status, answer.by_aiohttp) == (200, True), name
    assert recorder.requests[0][3] == b"amount=100&currency=usd"
    assert await fast.spend(key["id"]) == "1.00"


async def test_expect_continue_is_served_by_aiohttp(fast: Proxy) -> None:
    key = await fast.issue()
    async with connect(fast.url) as conn:
        await conn.send(proxied(key["token"], Expect="100-continue"))
        answer = await conn.answer()
        if answer.status == 100:
            answer = await conn.answer()
    assert (answer.status, answer.by_aiohttp) == (200, True)


async def test_a_body_over_the_limit_is_refused_and_not_forwarded(
    fast: Proxy, recorder: Recorder
) -> None:
    key = await fast.issue()
    async with connect(fast.url) as conn:
        await conn.send(proxied(key["token"], b"amount=100&currency=usd&x=" + b"y" * 5000))
        answer = await conn.answer()
    assert (answer.status, answer.json()["code"]) == (413, "body_too_large")
    assert recorder.requests == []
    async with fast.client() as kb:
        for _ in range(50):  # the audit log is written in the background
            entries = [e async for e in kb.audit(key_id=key["id"])]
            if entries:
                break
            await asyncio.sleep(0.1)
    assert [e.decision for e in entries] == ["body_too_large"]


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /stripe/v1/payment_intents HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /stripe/v1/payment_intents HTTP/1.1\r\n"
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"\x00\x01\x02 nonsense\r\n\r\n",
        b"GET /stripe/v1/customers HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /stripe/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET /stripe/v1/customers HTTP/1.1\r\nX: y\r\n" * 2000,  # a head with no end
    ],
    ids=["bad length", "two lengths", "garbage", "long header", "long target", "endless head"],
)
async def test_malformed_requests_get_a_4xx_from_aiohttp(
    fast: Proxy, recorder: Recorder, raw: bytes
) -> None:
    async with connect(fast.url) as conn:
        await conn.send(raw)
        answer = await conn.answer()
    assert 400 <= answer.status < 500
    assert answer.by_aiohttp
    assert recorder.requests == []


async def test_connection_close_is_honoured(fast: Proxy) -> None:
    key = await fast.issue()
    async with connect(fast.url) as conn:
        await conn.send(proxied(key["token"], Connection="close"))
        answer = await conn.answer()
        assert (answer.status, answer.headers["connection"]) == (200, "close")
        assert await conn.closed()


async def test_idle_connections_are_closed(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "KEEPALIVE_SECONDS", 0.2)
    monkeypatch.setattr(front, "_SWEEP_SECONDS", 0.05)
    config = make_config(tmp_path / "kb.db", recorder.url, http="fast")
    assert config.admin_token is not None
    async with running_server(config) as url:
        key = await Proxy(url, config.admin_token).issue()
        async with connect(url) as conn:
            await conn.send(proxied(key["token"]))
            assert (await conn.answer()).status == 200
            assert await conn.closed()


async def test_stopping_lets_requests_in_flight_finish(tmp_path: Path, recorder: Recorder) -> None:
    config = make_config(tmp_path / "kb.db", recorder.url, http="fast")
    assert config.admin_token is not None
    recorder.delay = 0.5
    async with running_server(config) as url:
        proxy = Proxy(url, config.admin_token)
        key = await proxy.issue()
        conn_cm = connect(url)
        conn = await conn_cm.__aenter__()
        idle_cm = connect(url)
        idle = await idle_cm.__aenter__()
        await conn.send(proxied(key["token"]))
        await asyncio.sleep(0.1)  # forwarded, the vendor is taking its time
    # The server has stopped: the request in flight was answered first, idle ones closed.
    answer = await conn.answer()
    assert answer.status == 200
    assert await idle.closed()
    await conn_cm.__aexit__(None, None, None)
    await idle_cm.__aexit__(None, None, None)
    recorder.delay = 0.0
    async with running_server(config) as url:
        assert await Proxy(url, config.admin_token).spend(key["id"]) == "1.00"


def test_fast_needs_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httptools", None)  # as if not installed
    with pytest.raises(ImportError, match=r"keybrake\[server\]"):
        uses_fast_http(ServerConfig(http="fast"))
    assert not uses_fast_http(ServerConfig(http="auto"))
    assert not uses_fast_http(ServerConfig(http="aiohttp"))


def test_http_setting() -> None:
    assert uses_fast_http(ServerConfig())  # auto, and the server extra is installed here
    assert ServerConfig.from_env({"KEYBRAKE_HTTP": "aiohttp"}).http == "aiohttp"
    with pytest.raises(ValueError, match="http"):
        ServerConfig(http="h2")


async def test_a_client_far_ahead_of_its_answers_is_paused_not_dropped(
    fast: Proxy, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused: list[bool] = []
    monkeypatch.setattr(front._Connection, "data_received", _counting(paused))
    key = await fast.issue(daily_usd_cap="1000")
    recorder.delay = 0.05
    body = b"amount=100&currency=usd&description=" + b"d" * 3000
    count = 20  # about 60 KB: more than the frame reads ahead of the request it serves
    async with connect(fast.url) as conn:
        await conn.send(proxied(key["token"], body))
        await asyncio.sleep(0.02)  # the first is with the vendor: the rest arrive meanwhile
        await conn.send(proxied(key["token"], body) * (count - 1))
        answers = [await conn.answer() for _ in range(count)]
    assert [a.status for a in answers] == [200] * count
    assert len(recorder.requests) == count
    assert any(paused)


def _counting(paused: list[bool]) -> Any:
    """``data_received`` that notes whether it left the connection paused."""
    original = front._Connection.data_received

    def data_received(self: Any, data: bytes) -> None:
        original(self, data)
        paused.append(self._paused)

    return data_received


async def test_an_answer_without_content_has_no_length(fast: Proxy, recorder: Recorder) -> None:
    key = await fast.issue()
    recorder.status = 204
    async with connect(fast.url) as conn:
        await conn.send(proxied(key["token"]))
        answer = await conn.answer()
        assert (answer.status, answer.body) == (204, b"")
        assert "content-length" not in answer.headers
        recorder.status = 200
        await conn.send(proxied(key["token"]))  # the connection is still in step
        assert (await conn.answer()).status == 200


async def test_requests_past_the_grace_period_are_cancelled_and_counted(
    tmp_path: Path, recorder: Recorder
) -> None:
    config = make_config(tmp_path / "kb.db", recorder.url, http="fast")
    assert config.admin_token is not None
    recorder.delay = 1.0
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = front.ProxySite(runner, "127.0.0.1", 0, shutdown_timeout=0.2)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    key = await Proxy(url, config.admin_token).issue()
    async with connect(url) as conn:
        await conn.send(proxied(key["token"]))
        await asyncio.sleep(0.2)  # with the vendor, which takes its time
        await runner.cleanup()  # a grace period of 0.2 s, then the request is cancelled
        assert await conn.closed()
    recorder.delay = 0.0
    # It may have reached the vendor: settled at its bound, nothing left pending.
    entries = await ledger_of(tmp_path / "kb.db", key["id"])
    assert [(e.state, e.settled_amount) for e in entries] == [("settled", 1_000_000)]


async def test_empty_lines_between_requests_are_skipped(fast: Proxy) -> None:
    key = await fast.issue()
    async with connect(fast.url) as conn:
        # Some clients end a POST body with an extra CRLF; RFC 9112 lets servers ignore it.
        await conn.send(proxied(key["token"]) + b"\r\n\r\n" + proxied(key["token"]))
        answers = [await conn.answer(), await conn.answer()]
    assert [(a.status, a.by_aiohttp) for a in answers] == [(200, False), (200, False)]
