"""resend-local (tests/resend.py) works as a Resend upstream: an e-mail sent is read back.

Groundwork for the Resend vendor: plain HTTP, as keybrake's forwarder will speak it, and the
official ``resend`` SDK pointed at the emulator through ``resend.api_url``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path

import aiohttp
import pytest
import resend

from tests.resend import resend_local_server

pytestmark = pytest.mark.node

API_KEY = "re_keybrake_test"  # resend-local takes any key that starts with "re_"
FROM = "Acme <onboarding@example.com>"
SUBJECT = "Hello from keybrake"
HTML = "<p>It <strong>works</strong>.</p>"
EMAIL = {"from": FROM, "to": ["delivered@example.com"], "subject": SUBJECT, "html": HTML}


def stored_emails(state_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(state_dir / "resend-local.sqlite")) as db:
        (count,) = db.execute("SELECT count(*) FROM email").fetchone()
        return int(count)


async def test_send_and_read_back_over_http(tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with resend_local_server(tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/emails", json=EMAIL, headers=auth) as response:
                assert response.status == 200, await response.text()
                sent = await response.json()
            assert set(sent) == {"id"}
            uuid.UUID(sent["id"])  # a UUID, like the real API's ids

            async with session.get(f"{url}/emails/{sent['id']}", headers=auth) as response:
                assert response.status == 200, await response.text()
                email = await response.json()
            assert email["object"] == "email"
            assert email["id"] == sent["id"]
            for field in ("from", "to", "subject", "html"):
                assert email[field] == EMAIL[field]
            assert email["text"] is None
            assert email["cc"] == email["bcc"] == email["reply_to"] == []
            assert email["last_event"] == "delivered"

            async with session.get(f"{url}/emails/{sent['id']}") as response:
                assert response.status == 401
                assert await response.json() == {
                    "statusCode": 401,
                    "message": "Missing API key",
                    "type": "missing_api_key",
                }
    assert stored_emails(tmp_path) == 1  # its state is this test's, not node_modules'


def test_official_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with resend_local_server(tmp_path) as url:
        # The SDK keeps its configuration in module globals (read from RESEND_API_URL and
        # RESEND_API_KEY at import); every request goes to f"{resend.api_url}{path}".
        monkeypatch.setattr(resend, "api_url", url)
        monkeypatch.setattr(resend, "api_key", API_KEY)
        params: resend.Emails.SendParams = {
            "from": FROM,
            "to": "delivered@example.com",  # a string: the API takes one address or a list
            "subject": SUBJECT,
            "html": HTML,
            "cc": ["cc@example.com"],
        }
        sent = resend.Emails.send(params)
        email = resend.Emails.get(sent["id"])
        assert email["to"] == ["delivered@example.com"]
        assert email["cc"] == ["cc@example.com"]
        assert email["subject"] == SUBJECT

        with pytest.raises(resend.exceptions.ResendError) as caught:
            resend.Emails.get(str(uuid.uuid4()))
        assert caught.value.code == 404
