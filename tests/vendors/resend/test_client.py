"""``vk.resend``'s models read what Resend answers, in each shape it answers it.

The client's requests are tested through the proxy against resend-local (test_proxy.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from keybrake import VendorError
from keybrake.vendors.resend.client import Email, ResendError, SentEmail


def test_an_email_from_resend() -> None:
    raw = {
        "object": "email",
        "id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c",
        "to": ["a@example.com"],
        "from": "Acme <hi@acme.test>",
        "created_at": "2023-04-03 22:13:42.674981+00",
        "subject": "Hello",
        "html": "<p>hi</p>",
        "text": None,
        "bcc": None,
        "cc": "c@example.com",
        "reply_to": ["r@example.com", 7],
        "last_event": "delivered",
        "scheduled_at": "2030-01-01T09:30:00.000Z",
    }
    email = Email.from_json(raw)
    assert email.id == raw["id"]
    assert email.from_ == "Acme <hi@acme.test>"
    assert (email.to, email.cc, email.bcc) == (["a@example.com"], ["c@example.com"], [])
    assert email.reply_to == ["r@example.com"]
    assert (email.html, email.text, email.last_event) == ("<p>hi</p>", None, "delivered")
    assert email.created_at == datetime(2023, 4, 3, 22, 13, 42, 674981, tzinfo=timezone.utc)
    assert email.scheduled_at == datetime(2030, 1, 1, 9, 30, tzinfo=timezone.utc)
    assert email.raw == raw


def test_an_email_with_missing_or_odd_fields() -> None:
    email = Email.from_json({"id": "e1", "created_at": "yesterday", "scheduled_at": 5})
    assert email == Email(id="e1")
    offset = Email.from_json({"id": "e1", "created_at": "2024-01-01T10:00:00+02:00"}).created_at
    assert offset is not None
    assert offset.utcoffset() == timedelta(hours=2)


def test_a_sent_email() -> None:
    sent = SentEmail.from_json({"id": "e1", "http_headers": {}})
    assert sent.id == "e1"
    assert sent.raw == {"id": "e1", "http_headers": {}}


def test_a_resend_error_is_a_vendor_error() -> None:
    body = {"statusCode": 422, "name": "validation_error", "message": "Invalid `to` field."}
    error = ResendError(
        "Invalid `to` field.", status=422, code="validation_error", body=body, vendor_fields=body
    )
    assert isinstance(error, VendorError)
    assert error.vendor == "resend"
    assert error.name == "validation_error"
    # resend-local names the kind "type".
    local = ResendError("x", status=404, vendor_fields={"type": "not_found"})
    assert local.name == "not_found"
    assert ResendError("x", status=500).name is None
