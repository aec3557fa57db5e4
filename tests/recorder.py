"""A recording upstream and a keybrake proxy in front of it (fixtures `recorder`, `proxy`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from keybrake import AuditRecord, Keybrake, RetryPolicy
from keybrake.server import running_server
from tests.conftest import make_config, twiml_pricing_file


@attrs.define
class Recorder:
    """An upstream that records what reaches it (to prove what did not).

    It answers ``answer`` (JSON) with ``status`` after ``delay`` seconds.
    """

    url: str = ""
    requests: list[tuple[str, str, dict[str, str], bytes]] = attrs.field(factory=list)
    #: Each request's headers as they came, repeats included.
    raw_headers: list[list[tuple[bytes, bytes]]] = attrs.field(factory=list)
    answer: dict[str, Any] = attrs.field(factory=lambda: {"id": "pi_recorded"})
    status: int = 200
    delay: float = 0.0
    #: Answered as a ``Set-Cookie`` header when set.
    cookie: str | None = None


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    seen = Recorder()

    async def handle(request: web.Request) -> web.Response:
        seen.requests.append(
            (request.method, request.raw_path, dict(request.headers), await request.read())
        )
        seen.raw_headers.append(list(request.raw_headers))
        if seen.delay:
            await asyncio.sleep(seen.delay)
        headers = {"Set-Cookie": seen.cookie} if seen.cookie else None
        return web.json_response(seen.answer, status=seen.status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    seen.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield seen
    await runner.cleanup()


@attrs.frozen
class Proxy:
    url: str
    admin_token: str

    def client(self) -> Keybrake:
        retry = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
        return Keybrake(self.admin_token, api_url=self.url, proxy_url=self.url, retry=retry)

    async def issue(self, **body: Any) -> dict[str, Any]:
        payload = {
            "vendor": "stripe",
            "allowed_endpoints": ["/v1/**"],
            "daily_usd_cap": 100,
            "expires_in": "5m",
            **body,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.url}/v1/keys",
                json=payload,
                headers={"Authorization": f"Bearer {self.admin_token}"},
            ) as response,
        ):
            assert response.status == 201
            data: dict[str, Any] = await response.json()
            return data

    async def key(self, key_id: str) -> dict[str, Any]:
        """``GET /v1/keys/{key_id}``: the key's view, spend included."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{self.url}/v1/keys/{key_id}",
                headers={"Authorization": f"Bearer {self.admin_token}"},
            ) as response,
        ):
            data: dict[str, Any] = await response.json()
            return data

    async def spend(self, key_id: str) -> str:
        return str((await self.key(key_id))["spent_today_usd"])

    async def audit_entries(self) -> list[AuditRecord]:
        """The audit log, once it holds something (entries are written after the answer)."""
        async with self.client() as kb:
            for _ in range(200):
                entries = [entry async for entry in kb.audit()]
                if entries:
                    return entries
                await asyncio.sleep(0.05)
        return []


@pytest.fixture
async def proxy(tmp_path: Path, recorder: Recorder) -> AsyncIterator[Proxy]:
    config = make_config(
        tmp_path / "kb.db",
        recorder.url,
        vendors={"twilio": {"api_base": recorder.url}},
        pricing_file=twiml_pricing_file(tmp_path),
        max_body_size=4096,
        upstream_timeout=1.0,
    )
    async with running_server(config) as url:
        assert config.admin_token is not None
        yield Proxy(url, config.admin_token)


async def raw_request(
    base_url: str,
    method: str,
    target: str,
    *,
    token: str,
    body: bytes = b"",
    content_type: str = "application/x-www-form-urlencoded",
) -> tuple[int, dict[str, Any]]:
    """Send bytes exactly as given: client libraries would normalise the odd paths."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload) if payload else {}
