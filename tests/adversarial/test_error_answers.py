"""Errors aiohttp answers by itself: a JSON ``code``, never an echo of the request, and log
lines without a credential in them (keybrake/server/http_errors.py).

A request head aiohttp's parser refuses never reaches keybrake's middleware; left alone,
aiohttp answers with the bytes around the error (an ``Authorization`` line included) and
logs them. These tests fail if aiohttp stops answering through ``handle_error`` or making
its request handlers the way ``http_errors`` relies on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from keybrake.server import running_server
from keybrake.server.app import create_app
from keybrake.server.util import redact
from tests.adversarial.rawhttp import RawAnswer, send
from tests.conftest import TWILIO_ACCOUNT_SID, RunningServer, make_config

VAULT_TOKEN = "vault_key_" + secrets.token_urlsafe(32)
BASIC = base64.b64encode(f"{TWILIO_ACCOUNT_SID}:{VAULT_TOKEN}".encode()).decode()
#: A bearer credential of no known shape: only its place after "Bearer" tells it apart.
OTHER_SECRET = secrets.token_urlsafe(24)
TWILIO_MESSAGES = f"/twilio/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Headers = list[tuple[str, str] | tuple[bytes, bytes]]

# (method, target, headers, what must not leak): each head is refused by aiohttp's parser.
MALFORMED: dict[str, tuple[str, str, Headers, str]] = {
    "control byte after the vault token": (
        "GET",
        "/stripe/v1/charges",
        [("Authorization", f"Bearer {VAULT_TOKEN}\x01")],
        VAULT_TOKEN,
    ),
    "space before the colon": (
        "GET",
        "/stripe/v1/charges",
        [("Authorization ", f"Bearer {VAULT_TOKEN}")],
        VAULT_TOKEN,
    ),
    "Twilio Basic with a control byte": (
        "POST",
        TWILIO_MESSAGES,
        [("Authorization", f"Basic {BASIC}\x01")],
        BASIC,
    ),
    "a bearer credential of no known shape": (
        "GET",
        "/v1/keys",
        [("authorization", f"bearer {OTHER_SECRET}\x7f")],
        OTHER_SECRET,
    ),
    "an invalid method, the token in the query": (
        "G\x01T",
        f"/stripe/v1/charges?key={VAULT_TOKEN}",
        [],
        VAULT_TOKEN,
    ),
    "a header line too long": (
        "GET",
        "/stripe/v1/charges",
        [("Authorization", f"Bearer {VAULT_TOKEN}" + "A" * 9000)],
        VAULT_TOKEN,
    ),
}


def assert_keybrake_json(answer: RawAnswer, status: int, code: str) -> dict[str, object]:
    assert answer.status == status
    assert b"application/json" in answer.head.lower()
    body = answer.json()
    assert body["code"] == code
    assert isinstance(body["message"], str)
    return body


@pytest.mark.parametrize("case", MALFORMED)
async def test_a_malformed_head_is_a_json_400_that_echoes_nothing_and_logs_no_secret(
    server: RunningServer, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    method, target, headers, secret = MALFORMED[case]
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")

    answer = await send(server.url, method, target, headers)

    body = assert_keybrake_json(answer, 400, "bad_request")
    assert set(body) == {"code", "message"}
    raw = answer.head + answer.body
    assert secret.encode() not in raw
    assert b"Authorization" not in raw
    assert b"vault_key_" not in raw
    assert "refused a malformed request" in caplog.text  # the line is there, no secret
    assert secret not in caplog.text
    assert VAULT_TOKEN not in caplog.text


@web.middleware
async def cut_off(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An upstream answer cut short while read: an error keybrake's middleware lets through."""
    if request.path.endswith("/cut-off"):
        raise aiohttp.ClientPayloadError(f"cut off; Authorization: Bearer {VAULT_TOKEN}")
    if request.path.endswith("/boom"):
        raise RuntimeError("a bug")
    return await handler(request)


@pytest.fixture
async def cutting_server(tmp_path: Path) -> AsyncIterator[str]:
    """A keybrake server whose innermost middleware fails (no upstream is reached)."""
    config = make_config(tmp_path / "cut.db", "http://127.0.0.1:9")
    app = create_app(config)
    app.middlewares.append(cut_off)
    async with running_server(config, app=app) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "vendor_shape"), [("/v1/cut-off", False), ("/stripe/v1/cut-off", True)]
)
async def test_an_exception_escaping_the_middleware_is_a_json_500_without_the_secret(
    cutting_server: str, caplog: pytest.LogCaptureFixture, path: str, vendor_shape: bool
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    headers: Headers = [("Authorization", f"Bearer {VAULT_TOKEN}")]

    answer = await send(cutting_server, "GET", path, headers)

    body = assert_keybrake_json(answer, 500, "internal_error")
    assert ("error" in body) is vendor_shape
    if vendor_shape:
        # Stripe's SDK reads a 500 of type api_error as a server fault, not the caller's.
        error = body["error"]
        assert isinstance(error, dict)
        assert error["type"] == "api_error"
    assert b"vault_key_" not in answer.head + answer.body
    assert "ClientPayloadError" in caplog.text  # logged, traceback and all, but redacted
    assert VAULT_TOKEN not in caplog.text


async def test_an_unexpected_error_is_logged_without_the_token_in_its_path(
    cutting_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await send(cutting_server, "GET", f"/stripe/v1/customers/{VAULT_TOKEN}/boom", [])
    assert_keybrake_json(answer, 500, "internal_error")
    assert "unexpected error on GET /stripe/v1/customers/" in caplog.text
    assert VAULT_TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"b'Authorization: Bearer {VAULT_TOKEN}\\x01'", VAULT_TOKEN),
        (f"authorization : Basic {BASIC}\r\nHost: x", BASIC),
        (f"{{'Authorization': 'Bearer {OTHER_SECRET}', 'Host': 'x'}}", OTHER_SECRET),
        (f"WWW: Basic {BASIC}", BASIC),
        (f"bearer {OTHER_SECRET}", OTHER_SECRET),
        (f"/stripe/v1/customers/{VAULT_TOKEN}", VAULT_TOKEN),
    ],
    ids=["header repr", "Basic header", "dict repr", "Basic alone", "bearer alone", "path"],
)
def test_redact_hides_credentials_after_their_scheme_or_header(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "***" in redact(text)


@pytest.mark.parametrize("text", ["Basic plan", "/stripe/v1/customers/cus_1", "bearer of news"])
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


async def test_a_token_split_across_packets_stays_out_of_the_log(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp quotes the TCP chunk around a parse error: one that starts inside a token
    carries no prefix a redaction could key on, so no parse error is quoted at all."""
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    token = "vault_key_" + "S" * 43
    head = "GET /stripe/v1/customers HTTP/1.1\r\nHost: x\r\n"
    writer.write(f"{head}Authorization: Bearer {token[:11]}".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(f"{token[11:]}\x01\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    await writer.wait_closed()
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert "S" * 20 not in caplog.text


def test_an_escaped_token_is_redacted_too() -> None:
    token = "vault_key_" + "Q" * 43
    escaped = "vault%5Fkey_" + "Q" * 43
    for text in (
        f"/v1/customers/{escaped}",
        "/v1/x/" + "".join(f"%{b:02X}" for b in token.encode()),
    ):
        assert "Q" * 20 not in redact(text)
    assert redact("/v1/customers/cus_%41") == "/v1/customers/cus_A"


async def dribble_until_closed(url: str, head: bytes | None, *, seconds: float) -> bool:
    """Send ``head``, then a header a byte every 0.1 s for up to ``seconds`` (``None``:
    nothing at all): whether the server closed the connection meanwhile."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head or b"")
        await writer.drain()
        for _ in range(int(seconds / 0.1)):
            try:
                if await asyncio.wait_for(reader.read(65536), timeout=0.1) == b"":
                    return True
                # An answer (to a whole request before the dribble): read on.
            except asyncio.TimeoutError:
                pass
            if reader.at_eof():
                return True
            if head is None:
                continue
            try:
                writer.write(b"a")
                await writer.drain()
            except ConnectionError:
                return True
        return False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(None, id="nothing-sent"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", id="a-head-a-byte-at-a-time"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nX-Slow: ",
            id="the-second-head-on-a-kept-connection",
        ),
    ],
)
async def test_a_head_that_never_completes_is_cut_off(tmp_path: Path, head: bytes | None) -> None:
    """A client sending its head a byte at a time (or nothing) holds a connection only until
    the idle timeout, not for aiohttp's default hour."""
    config = make_config(tmp_path / "idle.db", "http://127.0.0.1:9", idle_timeout=0.5)
    async with running_server(config) as url:
        assert await dribble_until_closed(url, head, seconds=15)


async def test_a_kept_connection_within_the_idle_timeout_still_serves(tmp_path: Path) -> None:
    config = make_config(tmp_path / "idle.db", "http://127.0.0.1:9", idle_timeout=5)
    async with running_server(config) as url:
        assert await connections_for_three_requests(url) == 1


async def connections_for_three_requests(url: str) -> int:
    """Connections a client opens for three requests 0.3 s apart, keeping them alive."""
    opened: list[object] = []

    async def on_open(*args: object) -> None:
        opened.append(args)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_open)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        for _ in range(3):
            async with session.get(f"{url}/healthz") as answer:
                assert answer.status == 200
            await asyncio.sleep(0.3)
    return len(opened)
