"""``vk.resend``: a typed Resend client that talks to Resend through the keybrake proxy.

``emails.send`` takes Resend's fields as keyword arguments (``from_`` is sent as ``from``),
``batch.send`` a list of e-mails in Resend's own JSON shape. Sends, reschedules and
cancellations are never retried: a send that may have reached Resend could go out twice.
Reads are retried on transient failures.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import attrs

from keybrake._errors import VendorError
from keybrake._retry import RetryPolicy
from keybrake._transport import ProxyTransport

__all__ = ["Batch", "Email", "Emails", "ResendClient", "ResendError", "SentEmail"]


class ResendError(VendorError):
    """Resend answered with an error (``{"statusCode", "name", "message"}``).

    ``code`` and ``name`` are Resend's error name (``validation_error``, ``not_found``, ...).
    """

    vendor = "resend"

    @property
    def name(self) -> str | None:
        """Resend's error name (resend-local calls it ``type``)."""
        return _str(self.vendor_fields, "name") or _str(self.vendor_fields, "type")


def _str(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    return value if isinstance(value, str) else None


def _strs(raw: Mapping[str, Any], name: str) -> list[str]:
    """An address field: Resend answers a list, but takes (and may echo) one string."""
    value = raw.get(name)
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _time(raw: Mapping[str, Any], name: str) -> datetime | None:
    """Resend's times are ISO 8601 (``"2023-04-03T22:13:42.674981+00:00"``)."""
    value = raw.get(name)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace(" ", "T", 1))
    except ValueError:
        return None


@attrs.frozen(kw_only=True)
class SentEmail:
    """What Resend answers to a send: the new e-mail's id."""

    id: str
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SentEmail:
        return cls(id=str(raw["id"]), raw=dict(raw))


@attrs.frozen(kw_only=True)
class Email:
    """A Resend e-mail. ``last_event`` is its delivery state (``"delivered"``, ...)."""

    id: str
    from_: str | None = None
    to: list[str] = attrs.field(factory=list)
    cc: list[str] = attrs.field(factory=list)
    bcc: list[str] = attrs.field(factory=list)
    reply_to: list[str] = attrs.field(factory=list)
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    last_event: str | None = None
    created_at: datetime | None = None
    scheduled_at: datetime | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Email:
        return cls(
            id=str(raw["id"]),
            from_=_str(raw, "from"),
            to=_strs(raw, "to"),
            cc=_strs(raw, "cc"),
            bcc=_strs(raw, "bcc"),
            reply_to=_strs(raw, "reply_to"),
            subject=_str(raw, "subject"),
            html=_str(raw, "html"),
            text=_str(raw, "text"),
            last_event=_str(raw, "last_event"),
            created_at=_time(raw, "created_at"),
            scheduled_at=_time(raw, "scheduled_at"),
            raw=dict(raw),
        )


def _resend_error(status: int, headers: Mapping[str, str], data: Any) -> ResendError:
    fields: Mapping[str, Any] = data if isinstance(data, dict) else {}
    name = _str(fields, "name") or _str(fields, "type")
    exc = ResendError(
        _str(fields, "message") or f"Resend answered HTTP {status}",
        status=status,
        code=name,
        body=fields,
        vendor_fields=fields,
    )
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            exc.retry_after = float(retry_after)
    return exc


def _attachment(attachment: Mapping[str, Any]) -> dict[str, Any]:
    """An attachment as Resend takes it: ``bytes`` content is sent in Base64."""
    out = dict(attachment)
    if isinstance(out.get("content"), (bytes, bytearray)):
        out["content"] = base64.b64encode(out["content"]).decode("ascii")
    return out


def _email(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An e-mail as Resend takes it: ``from_`` is ``from``, ``None`` is left out."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "attachments":
            value = [_attachment(a) for a in value]
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        out["from" if name == "from_" else name] = value
    return out


class ResendClient:
    """Resend through the proxy: ``emails`` and ``batch``; ``request()`` for the rest.

    Args:
        transport: sends requests to the proxy with the vault key.
        retry: how reads are retried on transient failures (writes never are).
    """

    def __init__(self, transport: ProxyTransport, *, retry: RetryPolicy | None = None) -> None:
        self._transport = transport
        self._retry = retry or RetryPolicy()
        self.emails = Emails(self)
        self.batch = Batch(self)

    def __repr__(self) -> str:
        return f"ResendClient({self._transport.base_url!r})"

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Call any Resend endpoint (``path`` like ``"/emails"``) and return its JSON.

        ``body`` is sent as JSON. Only reads (``GET``) are retried.

        Raises:
            ResendError: Resend answered with an error.
            ProxyRefused: the proxy refused the call (cap, endpoint, a field keybrake
                doesn't know, key state).
            KeybrakeUnavailable: the proxy or Resend could not be reached.
        """
        method = method.upper()
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None

        async def attempt() -> Any:
            response = await self._transport.send(
                method, path, query=query, json=body, headers=headers
            )
            try:
                data = json.loads(response.body) if response.body else {}
            except ValueError:
                data = None
            if response.status >= 400 or data is None:
                raise _resend_error(response.status, response.headers, data)
            return data

        if method != "GET":
            return await attempt()
        return await self._retry.call(attempt)


class Emails:
    """``vk.resend.emails``."""

    def __init__(self, client: ResendClient) -> None:
        self._client = client

    async def send(
        self,
        *,
        from_: str,
        to: str | Sequence[str],
        subject: str | None = None,
        html: str | None = None,
        text: str | None = None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        reply_to: str | Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
        tags: Sequence[Mapping[str, str]] | None = None,
        scheduled_at: str | None = None,
        template: Mapping[str, Any] | None = None,
        topic_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> SentEmail:
        """Send one e-mail.

        The proxy reserves its price first: each recipient (``to``, ``cc``, ``bcc``) times
        the price per e-mail. Never retried; ``idempotency_key`` is passed to Resend (keybrake
        counts a replay again).

        Args:
            from_: the sender (``"Acme <hi@acme.test>"``).
            to: one address or a list.
            subject: required unless ``template`` gives one.
            html: the HTML body.
            text: the plain-text body.
            cc: more recipients.
            bcc: more recipients.
            reply_to: where replies go.
            headers: custom headers; none naming recipients (``To``, ``Cc``, ``Bcc``).
            attachments: ``{"filename", "content"}`` (``bytes`` are sent in Base64) or
                ``{"filename", "path"}`` objects.
            tags: ``{"name", "value"}`` objects.
            scheduled_at: send later (ISO 8601, or Resend's natural language).
            template: ``{"id", "variables"}`` of a published template.
            topic_id: the topic the e-mail is scoped to.
            idempotency_key: Resend's ``Idempotency-Key``.

        Raises:
            SpendCapExceeded: the e-mail would take the key past its cap.
            ProxyRefused: keybrake refused it (a header naming recipients, ...).
            ResendError: Resend refused it.
        """
        email = _email(
            {
                "from_": from_,
                "to": to,
                "subject": subject,
                "html": html,
                "text": text,
                "cc": cc,
                "bcc": bcc,
                "reply_to": reply_to,
                "headers": headers,
                "attachments": attachments,
                "tags": tags,
                "scheduled_at": scheduled_at,
                "template": template,
                "topic_id": topic_id,
            }
        )
        data = await self._client.request("POST", "/emails", email, idempotency_key=idempotency_key)
        return SentEmail.from_json(data)

    async def get(self, email_id: str) -> Email:
        """Fetch an e-mail and its delivery state (``last_event``)."""
        return Email.from_json(await self._client.request("GET", f"/emails/{_segment(email_id)}"))

    async def update(self, email_id: str, *, scheduled_at: str) -> str:
        """Reschedule a scheduled e-mail; its id. Never retried."""
        data = await self._client.request(
            "PATCH", f"/emails/{_segment(email_id)}", {"scheduled_at": scheduled_at}
        )
        return str(data["id"])

    async def cancel(self, email_id: str) -> str:
        """Cancel a scheduled e-mail; its id. Never retried; what it cost stays counted."""
        data = await self._client.request("POST", f"/emails/{_segment(email_id)}/cancel", {})
        return str(data["id"])


class Batch:
    """``vk.resend.batch``."""

    def __init__(self, client: ResendClient) -> None:
        self._client = client

    async def send(
        self, emails: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[str]:
        """Send up to 100 e-mails in one call; their ids, in order. Never retried.

        Each e-mail is an object in Resend's shape (``{"from", "to", "subject", ...}``;
        ``from_`` is accepted for ``from``). The proxy reserves the whole batch's price first.

        Raises:
            SpendCapExceeded: the batch would take the key past its cap.
            ProxyRefused: keybrake refused it (more than 100 e-mails, an unknown field, ...).
            ResendError: Resend refused it.
        """
        data = await self._client.request(
            "POST", "/emails/batch", [_email(e) for e in emails], idempotency_key=idempotency_key
        )
        sent = data.get("data") if isinstance(data, dict) else None
        return [str(item["id"]) for item in sent] if isinstance(sent, list) else []


def _segment(value: str) -> str:
    return quote(value, safe="")
