"""Resend through a real keybrake server, with resend-local (tests/resend.py) as the upstream.

What reaches Resend is read back from resend-local's own database: a refused request must
leave it untouched and the key's spend unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import resend
import resend.exceptions

from keybrake import Keybrake, ProxyRefused, SpendCapExceeded, VaultKey
from keybrake.server import running_server
from keybrake.vendors.resend import VENDOR
from keybrake.vendors.resend.client import Email, ResendClient, ResendError, SentEmail
from tests.conftest import RunningServer, make_config
from tests.resend import resend_local_server

pytestmark = pytest.mark.node

API_KEY = "re_keybrake_upstream"  # the operator's Resend key; resend-local takes any "re_..."
FROM = "Acme <onboarding@acme.test>"
EMAIL: dict[str, Any] = {
    "from": FROM,
    "to": ["a@example.com"],
    "subject": "Hello from keybrake",
    "html": "<p>hi</p>",
}
ENDPOINTS = ["POST /emails", "POST /emails/batch", "GET /emails/*", "POST /emails/*/cancel"]


class ResendLocal:
    """resend-local's URL and what it has stored."""

    def __init__(self, url: str, state_dir: Path) -> None:
        self.url = url
        self.database = state_dir / "resend-local.sqlite"

    def emails(self) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM email")]

    def count(self) -> int:
        return len(self.emails())

    def addresses(self, email_id: str, field: str) -> list[str]:
        """An e-mail's ``to``, ``cc``, ``bcc`` or ``reply_to``, as resend-local stored it."""
        assert field in ("to", "cc", "bcc", "reply_to")
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            rows = db.execute(
                f'SELECT "{field}" FROM email_{field} WHERE email_id = ? ORDER BY "order"',
                (email_id,),
            )
            return [str(address) for (address,) in rows]

    def attachments(self, email_id: str) -> list[tuple[str, bytes]]:
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            rows = db.execute(
                "SELECT filename, content FROM email_attachment"
                ' WHERE email_id = ? ORDER BY "order"',
                (email_id,),
            )
            return [(str(name), bytes(content)) for name, content in rows]


@pytest.fixture(scope="module")
def resend_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResendLocal]:
    state_dir = tmp_path_factory.mktemp("resend-local")
    with resend_local_server(state_dir) as url:
        yield ResendLocal(url, state_dir)


@pytest.fixture
async def resend_server(tmp_path: Path, resend_local: ResendLocal) -> AsyncIterator[RunningServer]:
    """A keybrake server whose Resend upstream is resend-local; audit entries are written
    before each answer, so a test can count them."""
    db_path = tmp_path / "keybrake-resend.db"
    config = make_config(
        db_path,
        "http://127.0.0.1:9",
        vendors={"resend": {"api_key": API_KEY, "api_base": resend_local.url}},
        audit="durable",
    )
    async with running_server(config) as url:
        assert config.admin_token is not None
        yield RunningServer(url, config.admin_token, db_path, config)


@pytest.fixture
async def kb(resend_server: RunningServer) -> AsyncIterator[Keybrake]:
    async with resend_server.client() as client:
        yield client


async def spent(kb: Keybrake, vk: VaultKey) -> Decimal:
    return (await kb.get_key(vk.id)).spent_today_usd or Decimal(0)


async def test_an_email_is_delivered_and_each_recipient_counted(
    kb: Keybrake, resend_local: ResendLocal
) -> None:
    before = resend_local.count()
    async with VaultKey(
        "resend", ["POST /emails", "GET /emails/*"], cap=1, ttl="5m", client=kb
    ) as vk:
        client = vk.resend
        assert client is vk.vendor_client(VENDOR)
        assert isinstance(client, ResendClient)
        sent = await client.emails.send(
            from_=FROM,
            to=["a@example.com", "b@example.com"],
            cc="c@example.com",
            bcc=["d@example.com"],
            subject="Hello from keybrake",
            html="<p>hi</p>",
            headers={"X-Entity-Ref-ID": "42"},
            attachments=[{"filename": "hello.txt", "content": b"hello\x00world"}],
        )
        assert isinstance(sent, SentEmail)
        uuid.UUID(sent.id)
        email = await client.emails.get(sent.id)
        assert isinstance(email, Email)
        assert (email.id, email.from_, email.subject) == (sent.id, FROM, "Hello from keybrake")
        assert email.to == ["a@example.com", "b@example.com"]
        assert (email.cc, email.bcc) == (["c@example.com"], ["d@example.com"])
        assert email.last_event == "delivered"
        assert email.created_at is not None
        assert email.created_at.tzinfo is not None
        assert await spent(kb, vk) == Decimal("0.0036")  # 4 recipients at 0.0009
    assert resend_local.count() == before + 1
    assert resend_local.addresses(sent.id, "bcc") == ["d@example.com"]
    assert resend_local.attachments(sent.id) == [("hello.txt", b"hello\x00world")]
    (row,) = [row for row in resend_local.emails() if row["id"] == sent.id]
    assert json.loads(row["headers"]) == {"X-Entity-Ref-ID": "42"}


async def test_a_batch_is_delivered_and_counted(kb: Keybrake, resend_local: ResendLocal) -> None:
    before = resend_local.count()
    async with VaultKey("resend", ENDPOINTS, cap=1, ttl="5m", client=kb) as vk:
        client = vk.resend
        ids = await client.batch.send(
            [
                {**EMAIL, "to": "a@example.com"},
                {**EMAIL, "to": ["b@example.com", "c@example.com"], "cc": ["d@example.com"]},
            ]
        )
        assert len(ids) == 2
        assert (await client.emails.get(ids[1])).cc == ["d@example.com"]
        assert await spent(kb, vk) == Decimal("0.0036")
    assert resend_local.count() == before + 2


async def test_a_replay_is_counted_again(kb: Keybrake, resend_local: ResendLocal) -> None:
    """resend-local sends again whatever the Idempotency-Key, so keybrake counts it again."""
    before = resend_local.count()
    async with VaultKey("resend", ENDPOINTS, cap=1, ttl="5m", client=kb) as vk:
        client = vk.resend
        key = f"order-{uuid.uuid4()}"
        for _ in range(2):
            await client.emails.send(
                from_=FROM, to="a@example.com", subject="x", idempotency_key=key
            )
        assert resend_local.count() == before + 2
        assert await spent(kb, vk) == Decimal("0.0018")


async def test_past_the_cap_nothing_is_sent(kb: Keybrake, resend_local: ResendLocal) -> None:
    async with VaultKey("resend", ENDPOINTS, cap="0.002", ttl="5m", client=kb) as vk:
        client = vk.resend
        await client.emails.send(from_=FROM, to=["a@example.com", "b@example.com"], subject="x")
        before = resend_local.count()
        with pytest.raises(SpendCapExceeded) as caught:
            await client.emails.send(from_=FROM, to="c@example.com", subject="x")
        assert caught.value.attempted_usd == Decimal("0.0009")
        assert caught.value.spent_today_usd == Decimal("0.0018")
        with pytest.raises(SpendCapExceeded):  # the whole batch, though each would fit alone
            await client.batch.send([{**EMAIL, "to": "c@example.com"}] * 2)
        assert resend_local.count() == before
        assert await spent(kb, vk) == Decimal("0.0018")


REFUSALS: list[tuple[str, str, bytes, int, str]] = [
    (
        "unknown field",
        "/emails",
        json.dumps({**EMAIL, "recipients": ["z@example.com"]}).encode(),
        400,
        "bad_request",
    ),
    (
        "repeated key",
        "/emails",
        b'{"from": "hi@acme.test", "subject": "x", "to": "a@example.com",'
        b' "to": ["z1@example.com", "z2@example.com", "z3@example.com"]}',
        400,
        "bad_request",
    ),
    (
        "To header",
        "/emails",
        json.dumps({**EMAIL, "headers": {"to": "z@example.com"}}).encode(),
        400,
        "bad_request",
    ),
    (
        "header injection",
        "/emails",
        json.dumps({**EMAIL, "headers": {"X-A": "1\r\nBcc: z@example.com"}}).encode(),
        400,
        "bad_request",
    ),
    (
        "Bcc header in a batch",
        "/emails/batch",
        json.dumps([EMAIL, {**EMAIL, "headers": {"BCC": "z@example.com"}}]).encode(),
        400,
        "bad_request",
    ),
    ("batch over 100", "/emails/batch", json.dumps([EMAIL] * 101).encode(), 400, "bad_request"),
    (
        "broadcast send",
        "/broadcasts/4ef9a417-02e9-4d39-ad75-9611e0fcc33c/send",
        b"{}",
        403,
        "unpriced_endpoint",
    ),
    (
        "broadcast created sending",
        "/broadcasts",
        json.dumps({**EMAIL, "segment_id": "s1", "send": True}).encode(),
        403,
        "unpriced_endpoint",
    ),
    ("contact", "/contacts", b'{"email": "z@example.com"}', 403, "unpriced_endpoint"),
    ("api key", "/api-keys", b'{"name": "mine"}', 403, "endpoint_not_allowed"),
]


async def test_refusals_are_neither_forwarded_nor_charged(
    resend_server: RunningServer, kb: Keybrake, resend_local: ResendLocal
) -> None:
    before = resend_local.count()
    endpoints = ["POST /**"]  # the allowlist lets everything through: the pricer refuses
    async with (
        VaultKey("resend", endpoints, cap=10, ttl="5m", client=kb) as vk,
        aiohttp.ClientSession() as session,
    ):
        for what, path, body, status, code in REFUSALS:
            async with session.post(
                f"{resend_server.url}/resend{path}",
                data=body,
                headers={"Authorization": f"Bearer {vk.token}", "Content-Type": "application/json"},
            ) as response:
                answer = await response.json()
                assert (response.status, answer["code"]) == (status, code), (what, answer)
                assert response.headers["Keybrake-Error"] == code
                # Resend's own shape, for its SDKs.
                assert (answer["statusCode"], answer["name"]) == (status, code)
        assert await spent(kb, vk) == 0
        decisions = [record.decision async for record in kb.audit(key_id=vk.id)]
        assert sorted(decisions) == sorted(code for *_, code in REFUSALS)  # none "allowed"
    assert resend_local.count() == before


async def test_client_refusals(kb: Keybrake, resend_local: ResendLocal) -> None:
    before = resend_local.count()
    async with VaultKey("resend", ENDPOINTS, cap=1, ttl="5m", client=kb) as vk:
        client = vk.resend
        with pytest.raises(ProxyRefused) as caught:
            await client.emails.send(
                from_=FROM, to="a@example.com", subject="x", headers={"Cc": "z@example.com"}
            )
        assert (caught.value.status, caught.value.code) == (400, "bad_request")
        assert "recipients" in caught.value.message
        with pytest.raises(ProxyRefused) as caught:
            await client.batch.send([EMAIL] * 101)
        assert (caught.value.status, caught.value.code) == (400, "bad_request")
        assert await spent(kb, vk) == 0
    assert resend_local.count() == before


async def test_resend_errors(kb: Keybrake, resend_local: ResendLocal) -> None:
    async with VaultKey("resend", ENDPOINTS, cap=1, ttl="5m", client=kb) as vk:
        client = vk.resend
        with pytest.raises(ResendError) as caught:
            await client.emails.get(str(uuid.uuid4()))
        assert caught.value.status == 404
        assert caught.value.name == caught.value.code == "not_found"
        # Resend refuses an e-mail without a subject; the reservation is released.
        with pytest.raises(ResendError) as caught:
            await client.request("POST", "/emails", {"from": FROM, "to": "a@example.com"})
        assert caught.value.status in (400, 422)
        assert await spent(kb, vk) == 0


async def test_a_write_is_sent_once(kb: Keybrake) -> None:
    """resend-local answers 501 to a cancellation: a 5xx a read would retry, a write never."""
    async with VaultKey("resend", ENDPOINTS, cap=1, ttl="5m", client=kb) as vk:
        client = vk.resend
        sent = await client.emails.send(from_=FROM, to="a@example.com", subject="x")
        with pytest.raises(ResendError) as caught:
            await client.emails.cancel(sent.id)
        assert caught.value.status == 501
        paths = [record.path async for record in kb.audit(key_id=vk.id)]
        assert paths.count(f"/emails/{sent.id}/cancel") == 1
        assert await spent(kb, vk) == Decimal("0.0009")  # a cancellation is free


def _sdk_send(params: dict[str, Any]) -> Any:
    return resend.Emails.send(params)  # type: ignore[arg-type]


async def test_official_sdk(
    resend_server: RunningServer,
    kb: Keybrake,
    resend_local: ResendLocal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK is configured by module globals, and builds each URL as
    ``f"{resend.api_url}{path}"``: the proxy's ``/resend`` prefix goes in ``api_url``."""
    before = resend_local.count()
    async with VaultKey("resend", ENDPOINTS, cap="0.002", ttl="5m", client=kb) as vk:
        monkeypatch.setattr(resend, "api_key", vk.token)
        monkeypatch.setattr(resend, "api_url", f"{vk.client.config.proxy_url}/resend")
        sent = await asyncio.to_thread(
            _sdk_send, {**EMAIL, "to": "a@example.com", "cc": ["c@example.com"]}
        )
        assert resend_local.addresses(sent["id"], "to") == ["a@example.com"]
        assert resend_local.addresses(sent["id"], "cc") == ["c@example.com"]
        assert await spent(kb, vk) == Decimal("0.0018")
        assert resend_local.count() == before + 1

        with pytest.raises(resend.exceptions.ResendError) as refused:
            await asyncio.to_thread(_sdk_send, {**EMAIL, "headers": {"Bcc": "z@example.com"}})
        assert (refused.value.code, refused.value.error_type) == (400, "bad_request")
        assert "names recipients" in refused.value.message

        with pytest.raises(resend.exceptions.ResendError) as capped:
            await asyncio.to_thread(_sdk_send, EMAIL)
        assert not isinstance(capped.value, resend.exceptions.RateLimitError)  # not to wait out
        assert (capped.value.code, capped.value.error_type) == (429, "cap_exhausted")
        assert "daily cap" in capped.value.message
        assert capped.value.headers["Keybrake-Error"] == "cap_exhausted"
    assert resend_local.count() == before + 1


async def test_official_sdk_reads(
    resend_server: RunningServer, kb: Keybrake, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with VaultKey("resend", ENDPOINTS, cap=1, ttl="5m", client=kb) as vk:
        sent = await vk.resend.emails.send(
            from_=FROM, to="a@example.com", subject="Hi", text="Hello"
        )
        monkeypatch.setattr(resend, "api_key", vk.token)
        monkeypatch.setattr(resend, "api_url", f"{vk.client.config.proxy_url}/resend")
        email = await asyncio.to_thread(resend.Emails.get, sent.id)
        assert email["to"] == ["a@example.com"]


async def test_a_read_carries_no_body_but_an_empty_object(
    resend_server: RunningServer, kb: Keybrake, resend_local: ResendLocal
) -> None:
    """Resend's SDK sends ``{}`` on every read: that is forwarded as no body. Anything else
    in a read's body is refused, since the pricer never reads it."""
    async with VaultKey("resend", ["GET /emails/*"], cap=1, ttl="5m", client=kb) as vk:
        headers = {"Authorization": f"Bearer {vk.token}", "Content-Type": "application/json"}
        url = f"{resend_server.url}/resend/emails/{uuid.uuid4()}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, data=b'{"to": "a@example.com"}', headers=headers) as got:
                assert got.status == 400
                assert (await got.json())["code"] == "bad_request"
            async with http.get(url, data=b" { } ", headers=headers) as got:
                assert got.status == 404  # resend-local's own answer: it was forwarded
                assert "Keybrake-Error" not in got.headers


async def test_vk_resend_blocking(resend_server: RunningServer, resend_local: ResendLocal) -> None:
    """keybrake.sync's ``vk.resend``: the same client, blocking, priced the same."""
    from keybrake import sync

    def tool() -> tuple[SentEmail, Email, str, Decimal | None]:
        with (
            sync.Keybrake(
                resend_server.admin_token, api_url=resend_server.url, proxy_url=resend_server.url
            ) as kb,
            sync.VaultKey("resend", ENDPOINTS, cap=1, ttl="1m", client=kb) as vk,
        ):
            sent = vk.resend.emails.send(
                from_=FROM, to=["a@example.com", "b@example.com"], subject="Hi", text="Hello"
            )
            read = vk.resend.emails.get(sent.id)
            key = kb.get_key(vk.id)
            return sent, read, key.status, key.spent_today_usd

    sent, read, status, spent_usd = await asyncio.to_thread(tool)
    assert read.id == sent.id
    assert resend_local.addresses(sent.id, "to") == ["a@example.com", "b@example.com"]
    assert status == "active"
    assert spent_usd == Decimal("0.0018")
